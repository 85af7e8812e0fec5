"""``nashmoe compare``: the main job. Train every method on the same footing and compare them.

With no arguments it trains the nine methods once each on tiny-shakespeare (characters) with the
``tiny`` preset, a budget that finishes in a few minutes on a 2-core CPU, and writes the table,
``results.json``, ``results.md`` and the plots to ``runs/compare``. Examples::

    nashmoe compare                                        # the CPU demo (make demo)
    nashmoe compare --methods smoe,camex,namex-full-mom --seeds 3 --steps 2000
    nashmoe compare --corpus brown --data-dir ../shared/data --seeds 3 --steps 3000 --jobs 2
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nashmoe._argtypes import add_seeds_argument, command_line, positive_int
from nashmoe.train.cli.common import (
    USER_ERRORS,
    add_common_arguments,
    auto_threads,
    check_extras,
    config_from_args,
    report_error,
)
from nashmoe.train.compare import check_options_used, compare, parse_methods, parse_seeds
from nashmoe.train.config import options_for_method, parse_model_overrides
from nashmoe.train.distributed import resolve_device

# The default budget: all nine methods, one seed, evaluation and plots in about 6-8 minutes on a
# busy 2-core CPU (see docs/results.md for the measurement).
DEFAULTS: dict[str, Any] = {
    "corpus": "shakespeare",
    "preset": "tiny",
    "steps": 150,
    "batch_size": 8,
    "lr": 2e-3,
    "log_interval": 5,
    "eval_interval": None,
    "eval_batch_size": 64,
    "ckpt_interval": None,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods", default="all", help="comma-separated methods (default all nine)"
    )
    add_seeds_argument(parser, default=1, help="the same seeds for every method")
    parser.add_argument("--out", default="runs/compare", help="output directory")
    parser.add_argument(
        "--jobs", type=positive_int, default=1, help="trainings in parallel processes"
    )
    parser.add_argument(
        "--resume", action="store_true", help="reuse finished runs in --out, resume the others"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the runs already in --out (without --resume or --overwrite, an --out that "
        "holds runs is an error)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_common_arguments(parser, DEFAULTS)
    parser.set_defaults(_parser=parser)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run: every option that differs from its default."""
    return command_line(args, ["nashmoe", "compare"])


def run(args: argparse.Namespace) -> int:
    try:
        methods = parse_methods(args.methods)
        seeds = parse_seeds(args.seeds)
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        if not args.out.strip():
            raise ValueError("--out is empty (an output directory is needed)")
        if args.resume and args.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        resolve_device(args.device)
        # every method's shape is checked now (a segment length that does not divide the block
        # size fails here, not after hours of training the methods before it)
        overrides = parse_model_overrides(args.overrides)
        check_options_used(overrides, methods)
        base = config_from_args(
            args,
            method=methods[0],
            model=options_for_method(overrides, methods[0]),
            threads=auto_threads(args.threads, args.jobs),
        )
        for m in methods[1:]:
            base.replace(method=m, model=options_for_method(overrides, m))
        check_extras(base, plots=not args.no_plots)
    except USER_ERRORS as err:
        return report_error("compare", err)
    try:
        result = compare(
            base,
            methods=methods,
            seeds=seeds,
            out=args.out,
            jobs=args.jobs,
            resume=args.resume,
            overwrite=args.overwrite,
            plots=not args.no_plots,
            model_overrides=overrides,
            command=_command(args),
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except USER_ERRORS as err:
        return report_error("compare", err)
    print(result.table)
    print()
    print(result.verdict)
    print()
    for name, path in result.files.items():
        print(f"{name}: {path}")
    for d in result.diverged:
        print(
            f"nashmoe compare: {d['method']} seed {d['seed']} diverged at step {d['step']} "
            f"(non-finite {d['what']}); see {d['run_dir']}",
            file=sys.stderr,
        )
    return 1 if result.diverged else 0
