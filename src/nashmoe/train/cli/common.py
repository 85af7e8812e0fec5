"""Options shared by ``nashmoe train`` and ``nashmoe compare``, and clean error reporting."""

from __future__ import annotations

import argparse
import os
from typing import Any

from nashmoe._argtypes import (
    check_installed,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    report_error,
)
from nashmoe.data import CORPORA, TOKENIZERS, check_corpus_spec, check_tokenizer_spec
from nashmoe.models import PRESETS
from nashmoe.train.config import DTYPES, TrainConfig, parse_model_overrides

__all__ = [
    "USER_ERRORS",
    "add_common_arguments",
    "auto_threads",
    "check_extras",
    "check_output_file",
    "config_from_args",
    "report_error",
]

#: Errors a user can fix (bad option, missing or unreadable data file, a damaged checkpoint, an
#: unwritable or full output directory, a missing extra): one line, exit code 2.
USER_ERRORS = (ValueError, OSError, ImportError)


def add_common_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """Data, model, optimiser, evaluation, logging and hardware options."""
    d = defaults
    data = parser.add_argument_group("data")
    data.add_argument(
        "--corpus",
        default=d.get("corpus", "shakespeare"),
        metavar="NAME|PATH",
        help=f"{' or '.join(CORPORA)}; or your own text: a text file (split 90/5/5), a "
        "directory with train/validation/test files, or datasets:PATH (local files read with "
        "the datasets package)",
    )
    data.add_argument(
        "--tokenizer",
        default=None,
        metavar="KIND|PATH",
        help=f"{', '.join(TOKENIZERS)}, a tokenizer.json file, or a tokenizer directory "
        "(AutoTokenizer; local files only). Default: word for brown, char otherwise",
    )
    data.add_argument(
        "--data-dir", default=None, help="data directory (default $NASHMOE_DATA); brown, gpt2"
    )
    data.add_argument("--cache-dir", default=None, help="BPE cache (default $NASHMOE_CACHE)")
    data.add_argument("--min-freq", type=positive_int, default=None, help="word vocabulary cut-off")
    data.add_argument("--bpe-vocab-size", type=positive_int, default=None)

    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default=d.get("preset", "tiny"))
    model.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model field (n_layer=2, dropout=0.1, segment_len=16) or a MoE option "
        "(gamma=0.5, eta=1.0, momentum=0.7, curvature_rank=2, nash_max_iter=5); repeatable",
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--steps", type=positive_int, default=d.get("steps", 1000))
    opt.add_argument(
        "--batch-size",
        type=positive_int,
        default=d.get("batch_size", 16),
        help="sequences per optimiser step, over all processes and accumulation steps",
    )
    opt.add_argument("--grad-accum", type=positive_int, default=1)
    opt.add_argument("--lr", type=positive_float, default=d.get("lr", 1e-3))
    opt.add_argument("--min-lr", type=nonneg_float, default=None, help="default lr / 10")
    opt.add_argument("--warmup", type=nonneg_int, default=None, help="default 5%% of the steps")
    opt.add_argument("--weight-decay", type=nonneg_float, default=0.1)
    opt.add_argument(
        "--grad-clip", type=nonneg_float, default=1.0, help="gradient-norm clip (0: off)"
    )

    ev = parser.add_argument_group("evaluation and logging")
    ev.add_argument(
        "--eval-interval",
        type=positive_int,
        default=d.get("eval_interval"),
        help="evaluate validation every N steps (default: only at the end)",
    )
    ev.add_argument("--eval-batch-size", type=positive_int, default=d.get("eval_batch_size", 32))
    ev.add_argument("--log-interval", type=positive_int, default=d.get("log_interval", 10))
    ev.add_argument(
        "--ckpt-interval",
        type=positive_int,
        default=d.get("ckpt_interval"),
        help="checkpoint every N steps (a multiple of --log-interval; default: at the end)",
    )
    ev.add_argument("--tensorboard", choices=("auto", "on", "off"), default="auto")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")

    hw = parser.add_argument_group("hardware")
    hw.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    hw.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bf16 autocast on CUDA")
    hw.add_argument(
        "--threads",
        type=nonneg_int,
        default=0,
        help="torch CPU threads per process (0: half the CPU cores, at least 1)",
    )


def auto_threads(requested: int, jobs: int = 1) -> int:
    """``requested`` if positive, else half the cores per job (at least 1): on a busy shared
    machine, OpenMP threads that outnumber the free cores slow training down several times."""
    if requested and requested > 0:
        return requested
    return max(1, (os.cpu_count() or 2) // (2 * jobs))


def config_from_args(args: argparse.Namespace, **fields: Any) -> TrainConfig:
    """A :class:`TrainConfig` from the common options plus ``fields`` (which win)."""
    fields.setdefault("model", parse_model_overrides(args.overrides))
    return TrainConfig(
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        min_freq=args.min_freq,
        bpe_vocab_size=args.bpe_vocab_size,
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        eval_interval=args.eval_interval,
        eval_batch_size=args.eval_batch_size,
        log_interval=args.log_interval,
        ckpt_interval=args.ckpt_interval,
        tensorboard=args.tensorboard,
        progress=not args.no_progress,
        device=args.device,
        dtype=args.dtype,
        **fields,
    )


def check_output_file(path: str | os.PathLike[str], *, option: str) -> None:
    """Check, before any work, that ``path`` can be written: its directory exists and is
    writable, and ``path`` is not a directory.

    Raises:
        ValueError: naming ``option`` and the path.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a directory")
    if not os.path.isdir(parent):
        raise ValueError(f"{option} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{option} {path}: the directory {parent} is not writable")


def check_extras(
    config: TrainConfig | None = None, *, checkpoints: bool = True, plots: bool = False
) -> None:
    """Name a missing optional package before any work starts (not after the corpus and the
    model are loaded), and a corpus or tokenizer path that does not exist: safetensors for
    checkpoints, tensorboard for ``--tensorboard on``,
    tokenizers for BPE / GPT-2 / ``tokenizer.json`` tokenizers, matplotlib for plots.

    Raises:
        ImportError: ``<what> needs <package>: pip install 'nashmoe[<extra>]'``.
    """
    if checkpoints:
        check_installed("safetensors", extra="train", purpose="checkpoints")
    if config is not None:
        check_corpus_spec(config.corpus)
        check_tokenizer_spec(config.tokenizer)
        if config.tokenizer is not None and config.tokenizer not in TOKENIZERS:
            check_installed("tokenizers", extra="train", purpose=f"--tokenizer {config.tokenizer}")
        if config.tensorboard == "on":
            check_installed(
                "tensorboard",
                extra="tensorboard",
                purpose="--tensorboard on",
                hint="or pass --tensorboard off",
            )
        if config.tokenizer in ("bpe", "gpt2"):
            check_installed("tokenizers", extra="train", purpose=f"--tokenizer {config.tokenizer}")
    if plots:
        check_installed("matplotlib", extra="plot", purpose="plots", hint="or pass --no-plots")
