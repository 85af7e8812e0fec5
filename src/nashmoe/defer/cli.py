"""``nashmoe defer``: train multi-expert L2D models (CE, OvA, PiCCE-CE, PiCCE-OvA) and report
system accuracy, coverage and classifier accuracy.

Examples::

    nashmoe defer --dataset cifar10n --experts human --loss ce picce_ce --out runs/defer/c10n
    nashmoe defer --dataset cifar10 --experts synthetic --num-experts 8 --model kmeans-mlp
    nashmoe defer --dataset hatespeech --experts annotators --num-experts 3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from nashmoe._argtypes import (
    add_seeds_argument,
    nonneg_float,
    positive_float,
    positive_int,
    probability,
    report_error,
)

__all__ = ["add_arguments", "run"]

LOSS_NAMES = ("ce", "ova", "picce_ce", "picce_ova")
EXPERTS_FOR = {"cifar10n": "human", "cifar10": "synthetic", "hatespeech": "annotators"}
MODELS_FOR = {
    "cifar10n": ("cnn", "kmeans-mlp"),
    "cifar10": ("cnn", "kmeans-mlp"),
    "hatespeech": ("bow",),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=sorted(EXPERTS_FOR), default="cifar10n")
    parser.add_argument(
        "--experts",
        choices=sorted(set(EXPERTS_FOR.values())),
        default=None,
        help="human (CIFAR-10N annotators), synthetic (CIFAR-10) or annotators (hate speech "
        "votes); default: the one the dataset has",
    )
    parser.add_argument(
        "--loss",
        "--losses",
        dest="loss",
        nargs="+",
        choices=LOSS_NAMES,
        default=list(LOSS_NAMES),
        help="losses to train (space-separated)",
    )
    add_seeds_argument(parser, default=1)
    parser.add_argument(
        "--num-experts",
        type=positive_int,
        default=None,
        help="J: synthetic experts (default 4), simulated annotators (3), or the first J of the "
        "3 CIFAR-10N annotators (3)",
    )
    parser.add_argument(
        "--family",
        choices=["overlapped", "specialist", "varying"],
        default="overlapped",
        help="synthetic expert family",
    )
    parser.add_argument("--specialty-size", type=positive_int, default=3)
    parser.add_argument("--p-in", type=probability, default=0.9)
    parser.add_argument("--p-out", type=probability, default=0.0)
    parser.add_argument(
        "--model", default=None, help="cnn or kmeans-mlp (images), bow (text); default cnn / bow"
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="default 5 (cnn), 15 (kmeans-mlp), 8 (bow)",
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="default 0.05 (SGD), 1e-3 (AdamW), 5e-3 (bow)",
    )
    parser.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        default=None,
        help="default sgd for cnn, adam otherwise",
    )
    parser.add_argument(
        "--weight-decay", type=nonneg_float, default=None, help="default 5e-4 (cnn), 0 otherwise"
    )
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--width", type=positive_int, default=16, help="SmallCNN width")
    parser.add_argument(
        "--hidden", type=positive_int, default=256, help="MLP / text model hidden size"
    )
    parser.add_argument(
        "--train-limit",
        type=positive_int,
        default=None,
        help="train on a stratified subset of this many examples",
    )
    parser.add_argument(
        "--image-limit",
        type=positive_int,
        default=None,
        help="cifar10n: decode only the first N train images (quick checks)",
    )
    parser.add_argument(
        "--split-sizes",
        type=positive_int,
        nargs=3,
        default=None,
        metavar=("TRAIN", "VAL", "TEST"),
        help="cifar10n split (default 40000 5000 5000)",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    parser.add_argument("--data-dir", default=None, help="data folder (else $NASHMOE_DATA)")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="decoded-image / feature cache (else $NASHMOE_CACHE or ~/.cache/nashmoe)",
    )
    parser.add_argument("--out", default=None, help="folder for results.json")
    parser.add_argument(
        "--quiet", "--no-progress", dest="quiet", action="store_true", help="no per-epoch lines"
    )


def _sample_std(vals) -> float:
    """Sample standard deviation (ddof = 1); 0 for a single seed."""
    return float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def _check_vision(args: argparse.Namespace) -> None:
    """CIFAR images are decoded with Pillow: name the missing extra before any work."""
    from nashmoe._argtypes import check_installed

    check_installed("PIL", extra="vision", purpose="decoding CIFAR-10 images", package="Pillow")


def _fmt(v: Any) -> str:
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{100 * v:.2f}"


def _defaults(args: argparse.Namespace) -> dict[str, Any]:
    model = args.model or MODELS_FOR[args.dataset][0]
    if model not in MODELS_FOR[args.dataset]:
        raise ValueError(
            f"--model {model} does not fit --dataset {args.dataset} "
            f"(choose from {MODELS_FOR[args.dataset]})"
        )
    cnn = model == "cnn"
    optimizer = args.optimizer or ("sgd" if cnn else "adam")
    default_lr = 0.05 if optimizer == "sgd" else (5e-3 if model == "bow" else 1e-3)
    return {
        "model": model,
        "epochs": args.epochs or {"cnn": 5, "kmeans-mlp": 15, "bow": 8}[model],
        "optimizer": optimizer,
        "lr": args.lr if args.lr is not None else default_lr,
        "weight_decay": args.weight_decay
        if args.weight_decay is not None
        else (5e-4 if cnn else 0.0),
    }


def _load(args: argparse.Namespace, model: str, seed: int):
    from nashmoe.defer import experiments as ex

    inputs = "image" if model == "cnn" else "features"
    if args.dataset == "cifar10n":
        kwargs: dict[str, Any] = {}
        if args.split_sizes:
            kwargs["sizes"] = tuple(args.split_sizes)
        return ex.cifar10n_data(
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            seed=seed,
            train_limit=args.train_limit,
            inputs=inputs,
            image_limit=args.image_limit,
            num_experts=args.num_experts or 3,
            **kwargs,
        )
    if args.dataset == "cifar10":
        return ex.cifar10_synthetic_data(
            args.num_experts or 4,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            seed=seed,
            family=args.family,
            specialty_size=args.specialty_size,
            p_in=args.p_in,
            p_out=args.p_out,
            train_limit=args.train_limit,
            inputs=inputs,
        )
    return ex.hatespeech_data(
        args.num_experts or 3, data_dir=args.data_dir, seed=seed, train_limit=args.train_limit
    )


def run(args: argparse.Namespace) -> int:
    import torch

    experts = args.experts or EXPERTS_FOR[args.dataset]
    if experts != EXPERTS_FOR[args.dataset]:
        return report_error(
            "defer",
            f"--dataset {args.dataset} has {EXPERTS_FOR[args.dataset]} experts, not {experts}",
        )
    try:
        cfg = _defaults(args)
        if cfg["model"] == "cnn" or args.dataset != "hatespeech":
            _check_vision(args)
        if args.out:  # checked before any work, not after training
            from nashmoe.train.rundir import check_writable_dir

            check_writable_dir(args.out, option="--out")
    except (ValueError, OSError, ImportError) as err:
        return report_error("defer", err)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, cfg)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    import numpy as np

    from nashmoe.defer.experiments import run_experiment

    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    results = []
    for seed in args.seeds:
        try:
            data = _load(args, cfg["model"], seed)
        except (OSError, ImportError, ValueError) as err:
            return report_error("defer", err)
        summary = data.info["test"]
        log(
            f"[{data.name}] seed {seed}: J={data.num_experts}, train/val/test = "
            f"{len(data.train)}/{len(data.val)}/{len(data.test)}; test experts: acc "
            + ", ".join(_fmt(a) for a in summary["expert_acc"])
            + f"; A={summary['sum_acc']:.2f}, V={_fmt(summary['union_coverage'])}"
        )
        for loss in args.loss:
            res = run_experiment(
                data,
                loss=loss,
                seed=seed,
                epochs=cfg["epochs"],
                lr=cfg["lr"],
                weight_decay=cfg["weight_decay"],
                batch_size=args.batch_size,
                optimizer=cfg["optimizer"],
                width=args.width,
                hidden=args.hidden,
                verbose=not args.quiet,
                log=log,
            )
            res["model"] = cfg["model"]
            res["experts_info"] = data.info
            t = res["test"]
            log(
                f"  {loss:9s} seed {seed}: system_acc {_fmt(t['system_acc'])} coverage "
                f"{_fmt(t['coverage'])} classifier_all_acc {_fmt(t['classifier_all_acc'])} "
                f"({res['seconds']:.0f}s)"
            )
            results.append(res)
    keys = ["system_acc", "coverage", "classifier_all_acc", "human_deferred_acc"]
    print(
        f"\n{'loss':10s} "
        + " ".join(f"{k:>22s}" for k in keys)
        + ("  official_test_clf_acc" if "official_test_classifier_acc" in results[0] else "")
    )
    for loss in args.loss:
        rows = [r for r in results if r["loss"] == loss]
        cells = []
        for k in keys:
            vals = np.array([r["test"][k] for r in rows], dtype=float) * 100
            cells.append(f"{vals.mean():8.2f} ± {_sample_std(vals):5.2f}".rjust(22))
        line = f"{loss:10s} " + " ".join(cells)
        if "official_test_classifier_acc" in rows[0]:
            vals = np.array([r["official_test_classifier_acc"] for r in rows]) * 100
            line += f"  {vals.mean():8.2f} ± {_sample_std(vals):5.2f}"
        print(line)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"argv": sys.argv, "args": vars(args), "defaults": cfg, "runs": results}
        (out / "results.json").write_text(json.dumps(payload, indent=1, default=float))
        print(f"wrote {out / 'results.json'}")
    return 0
