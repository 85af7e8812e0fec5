"""``nashmoe upcycle SRC --num-experts N --method M --out DST``: a dense checkpoint (BERT, Llama,
Mistral, Qwen2, GPT-2) with MoE feed-forward blocks (:func:`nashmoe.hf.upcycle`)."""

from __future__ import annotations

import argparse
import sys

from nashmoe._argtypes import nonneg_float, positive_int
from nashmoe._cli_hf.common import add_common, check_out, load, parse_options, run_safely, save


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--num-experts", type=positive_int, required=True, help="experts N")
    parser.add_argument("--noise", type=nonneg_float, default=0.01, help="relative expert noise")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        options = parse_options(args.option)
        check_out(args.out, args.overwrite)
        model = load(args.src)
        from nashmoe.hf import upcycle

        upcycle(model, args.num_experts, args.method, noise=args.noise, seed=args.seed, **options)
        save(model, args.src, args.out)
        print(f"upcycled to {args.num_experts} experts, {args.method}: {args.out}", file=sys.stderr)
        return 0

    return run_safely("upcycle", body)
