"""``nashmoe vision``: train a small MoE ViT on CIFAR-10 with each method and seed, then score it on
the clean test set and under the 15 CIFAR-10-C corruptions × 5 severities.

Examples::

    nashmoe vision --method smoe,namex-full-mom --seeds 2 --epochs 3 --train-limit 5000 \\
        --test-limit 500 --data-dir ../shared/data --out runs/vision/try
    nashmoe vision --method dense --method camex --seeds 0,4,7 --jobs 2 --threads 1

Writes ``results.json`` (every run, the summary over seeds, paired differences), ``results.md``
(the table), ``runs/<method>-seed<k>.json`` (one file per finished run; ``--resume`` reuses them)
and ``accuracy_vs_severity.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from nashmoe._argtypes import (
    add_seeds_argument,
    command_line,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
)

__all__ = ["DEFAULT_METHODS", "add_arguments", "run"]

DEFAULT_METHODS = (
    "dense",
    "smoe",
    "camex",
    "ep-camex",
    "namex-full",
    "namex-mom",
    "namex-full-mom",
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, except None / False (their help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _HelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1]

    def one_line_error(message: str) -> None:  # argparse prints the usage first; one line is enough
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    parser.error = one_line_error  # type: ignore[method-assign]
    add = parser.add_argument
    add(
        "--method",
        "--methods",
        dest="method",
        action="append",
        default=None,
        help="method(s): a comma list, repeatable, or 'all' (default: "
        + ",".join(DEFAULT_METHODS)
        + ")",
    )
    add_seeds_argument(parser, default=1)
    add("--epochs", type=positive_int, default=10, help="training epochs")
    add(
        "--train-limit",
        type=positive_int,
        default=None,
        help="train on a class-stratified subset of this many images (default: all 49,000 "
        "not in the validation split)",
    )
    add(
        "--val-size",
        type=nonneg_int,
        default=1000,
        help="validation images carved from the train set, used to pick the epoch (0: keep "
        "the last epoch); the test set is never used for selection",
    )
    add(
        "--test-limit",
        type=positive_int,
        default=None,
        help="score a fixed class-stratified subsample of this many test images (default: "
        "all 10,000); the same images for every method and seed",
    )
    add("--corruptions", default="all", help="comma list of corruptions, or 'all' (the 15)")
    add("--severities", default="1,2,3,4,5", help="comma list of severities in 1..5")
    add(
        "--corruption-seed",
        type=nonneg_int,
        default=0,
        help="seed of the corrupted test set (fixed across runs)",
    )
    add("--batch-size", type=positive_int, default=128, help="training batch size")
    add("--eval-batch-size", type=positive_int, default=500, help="evaluation batch size")
    add("--lr", type=positive_float, default=1e-3, help="AdamW peak learning rate")
    add("--weight-decay", type=nonneg_float, default=0.05, help="AdamW weight decay")
    add("--no-augment", action="store_true", help="no random crop / flip")
    add("--depth", type=positive_int, default=6, help="transformer blocks")
    add("--d-model", type=positive_int, default=64, help="model width")
    add("--d-ff", type=positive_int, default=128, help="expert (FFN) width")
    add("--heads", type=positive_int, default=4, help="attention heads")
    add("--patch-size", type=positive_int, default=4, help="patch size (divides 32)")
    add(
        "--pool",
        choices=["mean", "cls"],
        default="mean",
        help="mean of patch tokens or a class token",
    )
    add("--moe-every", type=positive_int, default=1, help="every k-th block is an MoE block")
    add("--num-experts", type=positive_int, default=4, help="experts per MoE block")
    add("--top-k", type=positive_int, default=2, help="experts per token (smoe)")
    add(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per run (default: torch's choice, or cores / jobs with --jobs)",
    )
    add("--jobs", type=positive_int, default=1, help="runs in parallel processes")
    add("--data-dir", default=None, help="data folder with cifar10/ (else $NASHMOE_DATA)")
    add(
        "--cache-dir",
        default=None,
        help="decoded / corrupted image cache (else $NASHMOE_CACHE or ~/.cache/nashmoe)",
    )
    add("--out", default="runs/vision", help="output folder")
    add("--resume", action="store_true", help="reuse finished runs found in --out/runs")
    add("--no-plots", action="store_true", help="skip the PNG plot")
    add("--no-plot", dest="no_plots", action="store_true", help=argparse.SUPPRESS)  # old spelling
    add("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(_parser=parser)


def _error(message: str) -> int:
    print(f"nashmoe vision: error: {message}", file=sys.stderr)
    return 2


def _parse_list(text: str, choices: tuple[str, ...], option: str) -> list[str]:
    if text.strip() == "all":
        return list(choices)
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in choices]
    if unknown:
        raise ValueError(
            f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(choices)}"
        )
    if not items or len(set(items)) != len(items):
        raise ValueError(f"{option} needs distinct names, got {text!r}")
    return items


def _parse_severities(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--severities: integers in 1..5 expected, got {text!r}") from None
    bad = [v for v in values if not 1 <= v <= 5]
    if bad or not values or len(set(values)) != len(values):
        raise ValueError(f"--severities: distinct integers in 1..5 expected, got {text!r}")
    return sorted(values)


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the runs need, validated (ValueError / FileNotFoundError / ImportError)."""
    from nashmoe._paths import data_file
    from nashmoe.train.compare import parse_methods, parse_seeds
    from nashmoe.vision.corruptions import CORRUPTIONS
    from nashmoe.vision.experiment import TrainSettings
    from nashmoe.vision.model import ViTConfig

    method_text = ",".join(args.method) if args.method else ",".join(DEFAULT_METHODS)
    try:
        methods = parse_methods(method_text)
    except ValueError as err:
        raise ValueError(f"--method: {err}") from None
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as err:
        raise ValueError(f"--seeds: {err}") from None
    if any(s < 0 for s in seeds):
        raise ValueError(f"--seeds: seeds must be >= 0, got {args.seeds!r}")
    corruptions = _parse_list(args.corruptions, CORRUPTIONS, "--corruptions")
    severities = _parse_severities(args.severities)
    for split in ("train", "test"):
        data_file(f"cifar10/{split}.npz", args.data_dir)
    if args.val_size >= 50_000:
        raise ValueError(f"--val-size {args.val_size} leaves no training images")
    model = dict(
        depth=args.depth,
        d_model=args.d_model,
        d_ff=args.d_ff,
        n_head=args.heads,
        patch_size=args.patch_size,
        pool=args.pool,
        moe_every=args.moe_every,
        num_experts=args.num_experts,
        top_k=args.top_k,
    )
    if args.top_k > args.num_experts:
        raise ValueError(f"--top-k {args.top_k} exceeds --num-experts {args.num_experts}")
    configs = {m: ViTConfig(method=m, **model).to_dict() for m in methods}
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        augment=not args.no_augment,
        eval_batch_size=args.eval_batch_size,
    )
    if not args.no_plots:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ImportError(
                "the plot needs matplotlib: pip install 'nashmoe[plot]' (or --no-plot)"
            )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    threads = args.threads
    if threads is None and args.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
    return {
        "methods": methods,
        "seeds": seeds,
        "corruptions": corruptions,
        "severities": severities,
        "configs": configs,
        "settings": settings,
        "threads": threads,
        "out": out,
        "data": dict(
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            train_limit=args.train_limit,
            val_size=args.val_size,
            test_limit=args.test_limit,
        ),
    }


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run: every option that differs from its default."""
    return command_line(args, ["nashmoe", "vision"])


def _task_key(plan: dict[str, Any], method: str, seed: int) -> dict[str, Any]:
    from dataclasses import asdict

    data = {k: v for k, v in plan["data"].items() if k not in ("data_dir", "cache_dir")}
    return {
        "method": method,
        "seed": seed,
        "config": plan["configs"][method],
        "settings": asdict(plan["settings"]),
        "data": data,
        "corruptions": plan["corruptions"],
        "severities": plan["severities"],
        "corruption_seed": plan["corruption_seed"],
    }


def _run_task(task: dict[str, Any], report: Any = None) -> dict[str, Any]:
    """One (method, seed) run in a worker process: its own data and the cached corrupted set."""
    import torch

    from nashmoe.vision.experiment import (
        TrainSettings,
        corrupted_test_set,
        load_experiment_data,
        run_one,
    )
    from nashmoe.vision.model import ViTConfig

    if task["threads"]:
        torch.set_num_threads(task["threads"])
    data = load_experiment_data(**task["data"])
    corrupted = corrupted_test_set(
        data.test_x,
        task["corruptions"],
        severities=task["severities"],
        seed=task["corruption_seed"],
        cache_dir=task["data"]["cache_dir"],
    )
    return run_one(
        ViTConfig(**task["config"]),
        data,
        corrupted,
        TrainSettings(**task["settings"]),
        seed=task["seed"],
        severities=task["severities"],
        progress=report,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    try:
        plan = _plan(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        return _error(str(err))
    plan["corruption_seed"] = args.corruption_seed
    threads_before = torch.get_num_threads()
    if plan["threads"]:
        torch.set_num_threads(plan["threads"])
    try:
        return _run(args, plan)
    except (FileNotFoundError, ImportError) as err:
        return _error(str(err))
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, plan: dict[str, Any]) -> int:
    from dataclasses import asdict

    from nashmoe._results import plan_runs, save_run
    from nashmoe._version import __version__
    from nashmoe._workers import run_in_pool
    from nashmoe.train.progress import CountBar
    from nashmoe.vision.experiment import corrupted_test_set, load_experiment_data, run_one
    from nashmoe.vision.model import ViTConfig
    from nashmoe.vision.report import format_table, plot_severity, summarize

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    out: Path = plan["out"]
    (out / "runs").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_experiment_data(**plan["data"])
    info = data.info
    log(
        f"data: {info['train_size']} train / {info['val_size']} validation / "
        f"{info['test_size']} test images; {len(plan['corruptions'])} corruptions × "
        f"severities {plan['severities']} ({time.perf_counter() - t0:.0f}s)"
    )
    n_sets = len(plan["corruptions"]) * len(plan["severities"])
    bar = CountBar(
        n_sets * len(data.test_y), "corrupting", enabled=not args.no_progress, unit="img"
    )
    t1 = time.perf_counter()
    corrupted = corrupted_test_set(
        data.test_x,
        plan["corruptions"],
        severities=plan["severities"],
        seed=plan["corruption_seed"],
        cache_dir=plan["data"]["cache_dir"],
        progress=bar.update,
    )
    bar.close()
    corrupt_seconds = time.perf_counter() - t1
    # the runs: reuse finished ones with --resume
    items = [(m, s, _task_key(plan, m, s)) for m in plan["methods"] for s in plan["seeds"]]
    runs, todo = plan_runs(out / "runs", items, resume=args.resume)
    if runs:
        log(f"resuming: {len(runs)} finished run(s) reused from {out / 'runs'}")
    settings = plan["settings"]
    per_run = settings.epochs * (len(data.train_y) + len(data.val_y)) + len(data.test_y) * (
        1 + n_sets
    )
    bar = CountBar(per_run * len(todo), "training + eval", enabled=not args.no_progress, unit="img")

    def finish(method: str, seed: int, key: dict, path: Path, result: dict[str, Any]) -> None:
        save_run(path, result, key)
        runs[(method, seed)] = result
        log(
            f"{method} seed {seed}: clean {100 * result['clean_accuracy']:.2f}%, corrupted "
            f"{100 * (result['mean_corruption_accuracy'] or 0):.2f}% (epoch "
            f"{result['selected_epoch']}; train {result['train_images_per_s']:.0f} img/s, eval "
            f"{result['eval_images_per_s']:.0f} img/s, {result['seconds']:.0f}s)"
        )

    if args.jobs == 1 or len(todo) <= 1:
        for method, seed, key, path in todo:
            result = run_one(
                ViTConfig(**plan["configs"][method]),
                data,
                corrupted,
                settings,
                seed=seed,
                severities=plan["severities"],
                progress=bar.update,
            )
            finish(method, seed, key, path, result)
    else:
        tasks = [
            (
                (method, seed, key, path),
                {
                    "method": method,
                    "seed": seed,
                    "config": plan["configs"][method],
                    "settings": key["settings"],
                    "data": plan["data"],
                    "corruptions": plan["corruptions"],
                    "severities": plan["severities"],
                    "corruption_seed": plan["corruption_seed"],
                    "threads": plan["threads"],
                },
            )
            for method, seed, key, path in todo
        ]
        run_in_pool(
            _run_task,
            tasks,
            jobs=args.jobs,
            progress=bar.update,
            done=lambda item, result: finish(*item, result),
        )
    bar.close()
    all_runs = [runs[(m, s)] for m in plan["methods"] for s in plan["seeds"]]
    summary = summarize(all_runs)
    table = format_table(summary)
    payload = {
        "command": _command(args),
        "argv": sys.argv,
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": info,
        "methods": plan["methods"],
        "seeds": plan["seeds"],
        "corruptions": plan["corruptions"],
        "severities": plan["severities"],
        "corruption_seed": plan["corruption_seed"],
        "corruption_seconds": corrupt_seconds,
        "settings": asdict(settings),
        "model": {k: v for k, v in plan["configs"][plan["methods"][0]].items() if k != "method"},
        "jobs": args.jobs,
        "threads": plan["threads"],
        "wall_seconds": time.perf_counter() - t0,
        "runs": [{k: v for k, v in r.items() if k != "key"} for r in all_runs],
        "summary": summary,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    (out / "results.md").write_text(table + "\n")
    print(table)
    if not args.no_plots:
        plot_severity(summary, out / "accuracy_vs_severity.png")
    log(f"wrote {out / 'results.json'} ({time.perf_counter() - t0:.0f}s)")
    return 0
