"""``nashmoe ablate``: what the bargaining of NAMEx contributes (NAMEx, ICLR 2026), by paired
ablations. Trains the same model, data and seeds under named settings (a method plus option
overrides) and reports each setting's mean ± std over seeds and its paired differences with a
reference setting, the same seed for both (see :mod:`nashmoe.train.ablate`).

Groups (``--group``, repeatable, or ``all``; the reference first):

  step-norm      namex-full | namex-full-mean (step_norm=mean) | ep-camex |
                 ep-camex-nash-step (EP-CAMEx's mean direction with NAMEx's step length √N);
                 every layer steps in all four. Step length at a fixed direction:
                 namex-full vs namex-full-mean (Nash), ep-camex-nash-step vs ep-camex (mean).
                 Direction at a fixed step length: namex-full vs ep-camex-nash-step (√N),
                 namex-full-mean vs ep-camex (the mean's)
  budget         namex-full (nash_max_iter=20) | -it1 | -it2 | -it5
  nash-every     namex (Δl = L) | namex-full (Δl = 1) | namex-dl2 (Δl = 2; differs from
                 Δl = L only with four MoE layers or more: --set n_layer=6)
  momentum       namex-full | namex-full-mom with r ∈ {0.3, 0.8} × φ ∈ {0, ±15°, ±30°}
  bargain-on     namex-full-curv1 (τ) | namex-full-curv1-curved (M_i(τ_i)), curvature_rank=1
  merge-weights  namex (router scores) | namex-merge-nash | namex-merge-product
  compute        namex | smoe-top1 | smoe | smear | camex | ep-camex, at equal steps, and
                 the same plus namex-full, namex-mom, namex-full-mom (-time) at namex's
                 wall-clock time (--seconds to fix it); a time budget always comes from the
                 group's first setting, whatever --reference

Examples (sized for about an hour per group on a 2-core CPU; see docs/design.md)::

    nashmoe ablate --group step-norm --seeds 3 --corpus brown --data-dir ../shared/data \\
        --min-freq 8 --preset small --steps 1200 --batch-size 4 --jobs 2 --threads 1 \\
        --out runs/ablate-step-norm
    nashmoe ablate --group nash-every --set n_layer=6 --steps 1000 ...   # Δl = 2 needs depth
    nashmoe ablate --group compute --seconds 600 ...        # time-matched runs of 10 minutes
    nashmoe ablate --setting ref:namex --setting g05:namex,gamma=0.5 --reference ref
    nashmoe ablate ... --resume       # after an interruption: finished runs are not re-trained
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from nashmoe._argtypes import add_seeds_argument, positive_float, positive_int
from nashmoe.train.ablate import GROUPS, ablate, group_settings, parse_setting
from nashmoe.train.cli.common import (
    USER_ERRORS,
    add_common_arguments,
    auto_threads,
    check_extras,
    config_from_args,
    report_error,
)
from nashmoe.train.compare import parse_seeds
from nashmoe.train.config import options_for_method, parse_model_overrides
from nashmoe.train.distributed import resolve_device

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
        "--group",
        action="append",
        default=[],
        choices=[*GROUPS, "all"],
        help="a group of settings (repeatable; see above)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME:METHOD[,KEY=VALUE...]",
        help="a custom setting (keys as --set; time_matched=true trains it for the time "
        "budget); repeatable",
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="NAME",
        help="compare every setting with this one (default: each group's first setting)",
    )
    add_seeds_argument(parser, default=3, help="the same seeds for every setting")
    parser.add_argument("--out", default="runs/ablate", help="output directory")
    parser.add_argument(
        "--jobs", type=positive_int, default=1, help="trainings in parallel processes"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse finished runs in --out (never re-trained), resume the others",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the runs already in --out"
    )
    parser.add_argument(
        "--seconds",
        type=positive_float,
        default=None,
        help="wall-clock budget of the time-matched settings (default: the probed step time "
        "× --steps of each one's group's first setting, e.g. namex for compute)",
    )
    parser.add_argument(
        "--probe-steps",
        type=positive_int,
        default=10,
        help="timed steps of the step-time probe of time-matched settings",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip bargaining.png")
    add_common_arguments(parser, DEFAULTS)
    parser.set_defaults(_parser=parser)


def _command() -> str:
    """The command line as typed (``nashmoe ablate ...``)."""
    args = sys.argv[1:]
    if args[:1] != ["ablate"]:  # called through the API or python -m
        return shlex.join(["nashmoe", "ablate", *args])
    return shlex.join(["nashmoe", *args])


def run(args: argparse.Namespace) -> int:
    try:
        settings = group_settings(args.group) if args.group else []
        settings += [parse_setting(t) for t in args.setting]
        if not settings:
            raise ValueError("no settings: give --group NAME (or all) or --setting NAME:METHOD")
        seeds = parse_seeds(args.seeds)
        if not args.out.strip():
            raise ValueError("--out is empty (an output directory is needed)")
        if args.resume and args.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        resolve_device(args.device)
        overrides = parse_model_overrides(args.overrides)
        base = config_from_args(
            args,
            method=settings[0].method,
            model=options_for_method(overrides, settings[0].method),
            threads=auto_threads(args.threads, args.jobs),
        )
        check_extras(base, plots=not args.no_plots)
    except USER_ERRORS as err:
        return report_error("ablate", err)
    try:
        result = ablate(
            base,
            settings,
            reference=args.reference,
            model_overrides=overrides,
            seeds=seeds,
            out=args.out,
            jobs=args.jobs,
            resume=args.resume,
            overwrite=args.overwrite,
            seconds=args.seconds,
            probe_steps=args.probe_steps,
            plots=not args.no_plots,
            command=_command(),
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except USER_ERRORS as err:
        return report_error("ablate", err)
    print(result.table)
    print()
    for name, path in result.files.items():
        print(f"{name}: {path}")
    for d in result.diverged:
        print(
            f"nashmoe ablate: {d['setting']} seed {d['seed']} diverged at step {d['step']} "
            f"(non-finite {d['what']}); see {d['run_dir']}",
            file=sys.stderr,
        )
    return 1 if result.diverged else 0
