"""``nashmoe generate``: sample text from a trained checkpoint (KV and segment cache).

Example::

    nashmoe generate runs/shakespeare-tiny-namex-full-mom-s0 --prompt "ROMEO:" --tokens 200
"""

from __future__ import annotations

import argparse
import sys

import torch

from nashmoe._argtypes import nonneg_float
from nashmoe.train.cli.common import USER_ERRORS, check_extras, report_error
from nashmoe.train.distributed import resolve_device
from nashmoe.train.restore import WEIGHTS, load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory or a checkpoint directory")
    parser.add_argument(
        "--prompt",
        default="\n",
        help="text to continue (default a newline); printed whole, but a prompt longer than the "
        "model's block size is cropped to its last block-size tokens as context (a note says so)",
    )
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per sample")
    parser.add_argument(
        "--temperature",
        type=nonneg_float,
        default=0.8,
        help="sampling temperature (0: greedy; NaN and negative values are rejected)",
    )
    parser.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", choices=WEIGHTS, default="best")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-cache", action="store_true", help="full forward per token")


def run(args: argparse.Namespace) -> int:
    try:
        if args.tokens < 1:
            raise ValueError(f"--tokens must be >= 1, got {args.tokens}")
        if args.top_k is not None and args.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
        if args.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {args.samples}")
        device = resolve_device(args.device)
        check_extras()  # safetensors, before the checkpoint is opened
        loaded = load_model(args.checkpoint, weights=args.weights, device=device)
        tok = loaded.tokenizer
        ids = tok.encode(args.prompt) if args.prompt else []
        if not ids:
            if tok.eos_id is None:
                raise ValueError("the prompt encodes to no tokens and the tokenizer has no <eos>")
            ids = [tok.eos_id]
        block = loaded.model_config.block_size
        if len(ids) > block:
            print(
                f"nashmoe generate: note: the prompt is {len(ids)} tokens; the model sees only "
                f"its last {block} (the block size)",
                file=sys.stderr,
            )
    except USER_ERRORS as err:
        return report_error("generate", err)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    idx = torch.tensor([ids] * args.samples, dtype=torch.long, device=device)
    out = loaded.model.generate(
        idx,
        args.tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        use_cache=not args.no_cache,
        generator=gen,
    )
    for i, row in enumerate(out.tolist()):
        if args.samples > 1:
            print(f"--- sample {i}")
        print(tok.decode(row))
    return 0
