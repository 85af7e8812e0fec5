"""``nashmoe train``: train one MoE language model (one process or ``torchrun``).

Examples::

    nashmoe train --method namex-full-mom --steps 2000                   # tiny-shakespeare, tiny
    nashmoe train --corpus brown --preset small --method smoe --data-dir ../shared/data
    nashmoe train --out runs/my-run --resume                             # continue after a crash
    nashmoe train --out runs/my-run --overwrite                          # replace an earlier run
    torchrun --standalone --nproc_per_node=2 -m nashmoe.cli train --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

from nashmoe.moe import METHODS
from nashmoe.train.checkpoint import CheckpointWarning
from nashmoe.train.cli.common import (
    USER_ERRORS,
    add_common_arguments,
    auto_threads,
    check_extras,
    config_from_args,
    report_error,
)
from nashmoe.train.config import DISTRIBUTED
from nashmoe.train.distributed import resolve_device
from nashmoe.train.divergence import TrainingDiverged
from nashmoe.train.rundir import RunDirError, check_writable_dir, is_existing_run
from nashmoe.train.trainer import corpus_for, resume_checkpoint, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=METHODS, default="namex-full-mom")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    parser.add_argument(
        "--out",
        default=None,
        help="run directory (default runs/<corpus>-<preset>-<method>-s<seed>)",
    )
    parser.add_argument("--name", default=None, help="run name (default from the settings)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run directory's newest intact checkpoint (an error when there "
        "is none)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh over an earlier run in --out, deleting its checkpoints and logs "
        "(without it, an existing run in --out is an error)",
    )
    parser.add_argument(
        "--allow-missing-optimizer",
        action="store_true",
        help="with --resume: accept a checkpoint whose optimizer.safetensors is missing and "
        "continue with a fresh optimizer (not an exact continuation)",
    )
    parser.add_argument(
        "--distributed",
        choices=DISTRIBUTED,
        default="ddp",
        help="strategy under torchrun (fsdp: FSDP2, meant for CUDA; also runs on CPU)",
    )
    add_common_arguments(parser, {"ckpt_interval": None})


def run(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    try:
        config = config_from_args(
            args,
            method=args.method,
            seed=args.seed,
            out_dir=args.out,
            name=args.name,
            distributed=args.distributed,
            threads=auto_threads(args.threads),
        )
        if args.out is not None and not args.out.strip():
            raise ValueError("--out is empty (a run directory is needed)")
        if args.resume and args.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if args.allow_missing_optimizer and not args.resume:
            raise ValueError("--allow-missing-optimizer only applies with --resume")
        check_extras(config)
        resolve_device(args.device)
        # checked again by train() under the run lock; here before the corpus is loaded
        if args.resume:
            with warnings.catch_warnings():  # train() checks again and warns then (once)
                warnings.simplefilter("ignore", CheckpointWarning)
                resume_checkpoint(
                    config,
                    world_size=world,
                    required=True,
                    allow_missing_optimizer=args.allow_missing_optimizer,
                )
        elif not args.overwrite and is_existing_run(config.out_dir):
            raise RunDirError(
                f"--out {config.out_dir} already holds a run; pass --resume to continue it or "
                "--overwrite to replace it"
            )
        if rank == 0:
            check_writable_dir(config.out_dir, option="--out")
        corpus = corpus_for(config)
    except USER_ERRORS as err:
        return report_error("train", err)
    try:
        result = train(
            config,
            corpus=corpus,
            resume=args.resume,
            overwrite=args.overwrite,
            allow_missing_optimizer=args.allow_missing_optimizer,
        )
    except (TrainingDiverged, *USER_ERRORS) as err:
        return report_error("train", err)
    if rank == 0:
        summary = {
            "run_dir": str(result.run_dir),
            "validation_ppl": round(result.validation["ppl"], 4),
            "test_ppl": round(result.test["ppl"], 4),
            "best_step": result.best_step,
            "params": result.params,
            "tokens_per_s": round(result.timing["tokens_per_s"], 1),
            "nash": {k: v for k, v in result.nash.items() if k != "status_counts"},
        }
        print(json.dumps(summary, indent=1))
    return 0
