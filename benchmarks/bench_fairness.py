"""Benchmark of fairness-aware meta-learning via Nash bargaining (Zeng et al., NeurIPS 2024).

Runs every method (ERM, DRO, LtR, FORML, Meta-gDRO and the three Nash two-stage variants) on
Adult/sex, Adult/race, COMPAS/race and German/age over 5 seeds, then writes

- ``<out>/runs/<task>/<method>/seed<k>.json``: every run (per-epoch val/test metrics,
  bargaining diagnostics);
- ``<out>/summary.json``: mean ± std over seeds (validation-selected epoch, last epoch, and the
  reference's test-selected protocol, labelled as such), and the two-stage vs one-stage changes;
- ``<out>/table.md``: the Markdown tables; ``<out>/tradeoff.png``: accuracy vs disparity.

Usage (about an hour on two CPU cores)::

    nice -n 10 .venv/bin/python benchmarks/bench_fairness.py --out runs/bench-fairness --jobs 2

Interrupted runs resume: finished run files are reused unless ``--no-resume``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nashmoe._argtypes import HelpFormatter, add_seeds_argument
from nashmoe.fairness.benchmark import BENCHMARK_TASKS, run_benchmark, write_report
from nashmoe.fairness.trainer import METHODS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--out", default="runs/bench-fairness")
    parser.add_argument("--tasks", default=",".join(BENCHMARK_TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    add_seeds_argument(parser, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="override every task's epochs")
    parser.add_argument("--meta-per-cell", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plot")
    parser.add_argument("--no-plot", dest="no_plots", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = run_benchmark(
        out_dir=args.out,
        tasks=[t for t in args.tasks.split(",") if t],
        methods=[m for m in args.methods.split(",") if m],
        seeds=args.seeds,
        data_dir=args.data_dir,
        overrides={"epochs": args.epochs},
        meta_per_cell=args.meta_per_cell,
        jobs=args.jobs,
        resume=not args.no_resume,
    )
    write_report(results, args.out, plot=not args.no_plots)
    print((Path(args.out) / "table.md").read_text())
    print(f"total wall time {time.perf_counter() - start:.0f}s; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
