"""``nashmoe convert SRC --method M --out DST``: a sparse MoE checkpoint (Mixtral, Qwen2-MoE,
Qwen3-MoE, OLMoE, DeepSeek-V3) with its MoE blocks replaced (:func:`nashmoe.hf.convert`)."""

from __future__ import annotations

import argparse
import sys

from nashmoe._cli_hf.common import add_common, check_out, load, parse_options, run_safely, save


def _base(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument(
        "--base",
        type=_base,
        default="auto",
        help="base expert of the CAMEx family: shared, mean, an expert index, or auto (the "
        "shared expert where it fits, else the mean)",
    )
    parser.add_argument(
        "--anchored",
        action="store_true",
        help="propagating methods: anchor each layer's base to its own experts",
    )


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        options = parse_options(args.option)
        check_out(args.out, args.overwrite)
        model = load(args.src)
        from nashmoe.hf import convert

        extra = {"anchored": True} if args.anchored else {}
        convert(
            model, args.method, base=None if args.base == "auto" else args.base, **extra, **options
        )
        save(model, args.src, args.out)
        print(f"converted to {args.method}: {args.out}", file=sys.stderr)
        return 0

    return run_safely("convert", body)
