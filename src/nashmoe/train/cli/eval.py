"""``nashmoe eval``: exact validation / test perplexity of a trained checkpoint.

Example::

    nashmoe eval runs/shakespeare-tiny-namex-full-mom-s0 --split validation,test
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from nashmoe._argtypes import positive_int
from nashmoe.data import SPLIT_ALIASES, SPLITS, canonical_split, load_corpus
from nashmoe.train.cli.common import USER_ERRORS, check_extras, check_output_file, report_error
from nashmoe.train.distributed import resolve_device
from nashmoe.train.evaluate import evaluate
from nashmoe.train.restore import WEIGHTS, load_model
from nashmoe.train.trainer import resolve_dtype


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory or a checkpoint directory")
    parser.add_argument(
        "--split",
        default="validation,test",
        help="comma-separated: train, validation (or valid), test",
    )
    parser.add_argument(
        "--weights", choices=WEIGHTS, default="best", help="best validation (default) or last"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=32, help="blocks per forward pass"
    )
    parser.add_argument("--data-dir", default=None, help="data directory (default $NASHMOE_DATA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results")


def run(args: argparse.Namespace) -> int:
    try:
        splits = [s.strip() for s in args.split.split(",") if s.strip()]
        bad = [s for s in splits if s not in SPLITS and s not in SPLIT_ALIASES]
        if bad or not splits:
            raise ValueError(f"unknown split(s) {bad or args.split!r}; choose from {SPLITS}")
        splits = list(dict.fromkeys(canonical_split(s) for s in splits))
        device = resolve_device(args.device)
        if args.json:
            check_output_file(args.json, option="--json")
        check_extras()  # safetensors, before the checkpoint is opened
        loaded = load_model(args.checkpoint, weights=args.weights, device=device)
        cfg = loaded.config
        corpus = load_corpus(
            cfg.corpus,
            tokenizer=loaded.tokenizer,
            data_dir=args.data_dir if args.data_dir is not None else cfg.data_dir,
        )
    except USER_ERRORS as err:
        return report_error("eval", err)
    amp = resolve_dtype(args.dtype, device)

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32)

    out = {
        "checkpoint": str(loaded.checkpoint),
        "weights": loaded.weights,
        "step": loaded.step,
        "method": cfg.method,
    }
    for split in splits:
        res = evaluate(
            loaded.model,
            corpus.split(split),
            block_size=loaded.model_config.block_size,
            batch_size=args.batch_size,
            device=device,
            autocast=autocast,
        )
        if not math.isfinite(res["loss"]):
            return report_error(
                "eval",
                ValueError(
                    f"the {split} loss of {loaded.checkpoint} ({loaded.weights} weights) is "
                    f"{res['loss']}: the model's outputs are not finite"
                ),
            )
        out[split] = res
        print(
            f"{split}: loss {res['loss']:.4f} nats/token, perplexity {res['ppl']:.3f} "
            f"({res['tokens']} tokens; {loaded.weights} weights, step {loaded.step})"
        )
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(out, f, indent=1)
        except OSError as err:
            return report_error("eval", err)
    return 0
