"""``nashmoe fair``: fairness-aware meta-learning via Nash bargaining (Zeng et al., NeurIPS 2024).

One run::

    nashmoe fair --dataset adult --sensitive sex --method nash-meta-gdro --seed 0 --out runs/fair

The benchmark (every method on every task over seeds; table and plot)::

    nashmoe fair --benchmark --out runs/fair-bench --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from nashmoe._argtypes import (
    add_seeds_argument,
    check_installed,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    report_error,
)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nashmoe.fairness.benchmark import BENCHMARK_TASKS
    from nashmoe.fairness.datasets import DATASETS
    from nashmoe.fairness.trainer import METHODS, SELECTION_METRICS

    parser.add_argument("--dataset", choices=sorted(DATASETS), default="adult")
    parser.add_argument(
        "--sensitive",
        default=None,
        help="sensitive attribute (adult: sex, race; compas: race, sex; german: age, sex); "
        "default: the data set's first",
    )
    parser.add_argument("--method", choices=list(METHODS), default="nash-meta-gdro")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the run")
    parser.add_argument("--data-dir", default=None, help="data folder (default $NASHMOE_DATA)")
    parser.add_argument("--out", default=None, help="output folder (JSON results, table, plot)")
    hp = parser.add_argument_group("hyperparameters (default: per data set, see DATASET_DEFAULTS)")
    hp.add_argument("--epochs", type=positive_int, default=None)
    hp.add_argument("--bargain-epochs", type=nonneg_int, default=None, help="exact stage-1 epochs")
    hp.add_argument("--lr", type=positive_float, default=None)
    hp.add_argument("--dropout", type=probability, default=None)
    hp.add_argument("--batch-size", type=positive_int, default=None)
    hp.add_argument("--meta-per-cell", type=positive_int, default=3)
    hp.add_argument("--val-loss", choices=("ce+soft_f1", "ce"), default=None)
    hp.add_argument("--weight-norm", choices=("l2", "sum"), default=None)
    hp.add_argument("--players", choices=("group_label", "group"), default=None)
    hp.add_argument("--erm-reduction", choices=("reference", "mean"), default=None)
    hp.add_argument("--cvar-fraction", type=probability, default=None)
    hp.add_argument("--selection-metric", choices=list(SELECTION_METRICS), default=None)
    hp.add_argument("--backend", choices=("auto", "func", "ghost"), default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    parser.add_argument(
        "--quiet",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no per-epoch lines (which show validation metrics only)",
    )
    bench = parser.add_argument_group("benchmark")
    bench.add_argument(
        "--benchmark", action="store_true", help="run every method on every task over seeds"
    )
    bench.add_argument("--tasks", default=",".join(BENCHMARK_TASKS))
    bench.add_argument("--methods", default=",".join(METHODS))
    add_seeds_argument(bench, default=5, help="benchmark seeds")
    bench.add_argument("--jobs", type=positive_int, default=1, help="worker processes")
    bench.add_argument("--no-resume", action="store_true", help="rerun existing run files")
    bench.add_argument("--no-plots", action="store_true", help="skip the PNG plot")
    bench.add_argument("--no-plot", dest="no_plots", action="store_true", help=argparse.SUPPRESS)


def _overrides(args: argparse.Namespace) -> dict:
    return {
        "epochs": args.epochs,
        "bargain_epochs": args.bargain_epochs,
        "lr": args.lr,
        "dropout": args.dropout,
        "batch_size": args.batch_size,
        "val_loss": args.val_loss,
        "weight_norm": args.weight_norm,
        "players": args.players,
        "erm_reduction": args.erm_reduction,
        "cvar_fraction": args.cvar_fraction,
        "selection_metric": args.selection_metric,
        "backend": args.backend,
    }


def _check_benchmark_args(tasks: list[str], methods: list[str], datasets: dict) -> None:
    from nashmoe.fairness.trainer import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"--methods: unknown {unknown or methods}; choose from {list(METHODS)}")
    for task in tasks:
        name, _, sensitive = task.partition("/")
        if name not in datasets or sensitive not in datasets[name]:
            raise ValueError(f"--tasks: unknown task {task!r} (dataset/sensitive, e.g. adult/sex)")
    if not tasks:
        raise ValueError("--tasks: no task given")


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.4f}"


def run(args: argparse.Namespace) -> int:
    import torch

    from nashmoe.fairness.benchmark import TABLE_METRICS, run_benchmark, write_report
    from nashmoe.fairness.datasets import DATASETS, load_fair_dataset
    from nashmoe.fairness.trainer import config_for, train_fair
    from nashmoe.train.distributed import resolve_device
    from nashmoe.train.rundir import check_writable_dir

    # environment errors before any work (one line, exit status 2)
    try:
        resolve_device(args.device)
        out = args.out or ("runs/fair-bench" if args.benchmark else None)
        if out is not None:
            check_writable_dir(out, option="--out")
    except (ValueError, OSError) as exc:
        return report_error("fair", exc)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.benchmark:
        out = Path(args.out or "runs/fair-bench")
        try:
            tasks = [t for t in args.tasks.split(",") if t]
            methods = [m for m in args.methods.split(",") if m]
            _check_benchmark_args(tasks, methods, DATASETS)
            if not args.no_plots:
                check_installed(
                    "matplotlib", extra="plot", purpose="the plot", hint="or pass --no-plots"
                )
        except (ValueError, ImportError) as exc:
            return report_error("fair", exc)
        results = run_benchmark(
            out_dir=out,
            tasks=tasks,
            methods=methods,
            seeds=args.seeds,
            data_dir=args.data_dir,
            overrides=_overrides(args),
            meta_per_cell=args.meta_per_cell,
            jobs=args.jobs,
            threads=args.threads or 1,
            resume=not args.no_resume,
        )
        write_report(results, out, plot=not args.no_plots)
        print((out / "table.md").read_text())
        plot = "" if args.no_plots else f", {out / 'tradeoff.png'}"
        print(f"wrote {out / 'table.md'}, {out / 'summary.json'}{plot}")
        return 0

    sensitive = args.sensitive or DATASETS[args.dataset][0]
    try:
        ds = load_fair_dataset(
            args.dataset,
            sensitive,
            seed=args.seed,
            data_dir=args.data_dir,
            meta_per_cell=args.meta_per_cell,
        )
        config = config_for(
            args.dataset, sensitive, args.method, seed=args.seed, **_overrides(args)
        )
    except (ValueError, OSError, ImportError) as exc:
        return report_error("fair", exc)
    print(
        f"{args.dataset}/{sensitive} seed {args.seed}: train {len(ds.train)}, meta {len(ds.meta)}, "
        f"val {len(ds.val)}, test {len(ds.test)}; groups {list(ds.group_names)}; "
        f"label 1 = {ds.label_description}"
    )
    print(f"method {config.method}: {config}")

    def progress(rec: dict) -> None:
        if args.quiet:
            return
        d = rec["diagnostics"]
        extra = ""
        if "conflict_fraction" in d:
            extra = f" conflict {d['conflict_fraction']:.2f}"
            if d["bargain_attempts"]:
                extra += f" bargain_ok {d['bargain_success_rate']:.2f}"
        print(
            f"epoch {rec['epoch']:3d} stage {rec['stage']} loss {d['train_loss']:.4f} "
            f"val roc_auc {_fmt(rec['val']['roc_auc'])} "
            f"bal_acc {_fmt(rec['val']['balanced_accuracy'])}{extra} ({rec['seconds']:.1f}s)",
            flush=True,
        )

    result = train_fair(ds, config, device=args.device, progress=progress)
    print(f"\nselected epoch (validation {config.selection_metric}): {result.selected_epoch}")
    print("test, evaluated once at the end:")
    print(f"{'test metric':34s} {'selected':>9s} {'last':>9s}")
    for m in (*TABLE_METRICS, "roc_auc_worst_group", "equal_opportunity_difference"):
        print(f"{m:34s} {_fmt(result.selected['test'][m]):>9s} {_fmt(result.last['test'][m]):>9s}")
    if result.stage1:
        s = result.stage1
        print(
            f"stage 1 ({s['epochs']} epochs): bargaining succeeded in "
            f"{_fmt(s['bargain_success_rate'])} of {s['bargain_attempts']} batches; statuses "
            f"{s['status_counts']}; conflict fraction {_fmt(s['conflict_fraction'])}"
        )
    for note in result.notes:
        print(f"note: {note}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{args.dataset}-{sensitive}-{args.method}-seed{args.seed}.json"
        path.write_text(json.dumps(result.to_dict(), allow_nan=True))
        print(f"wrote {path}")
    return 0
