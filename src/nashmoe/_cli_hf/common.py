"""Shared parts of ``nashmoe convert`` and ``nashmoe upcycle``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from nashmoe.moe.config import METHODS

TOKENIZER_FILES = (
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="a transformers checkpoint directory (read offline)")
    parser.add_argument(
        "--method",
        required=True,
        choices=[m for m in METHODS if m != "dense"],
        help="the MoE method of the new layers",
    )
    parser.add_argument("--out", required=True, help="the directory to write")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a MoEConfig field (repeatable), e.g. --option segment_len=64 --option gamma=0.5; "
        "VALUE is read as JSON, else as a string",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="write into an --out that is not empty"
    )


def parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def check_out(out: str, overwrite: bool) -> None:
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ValueError(f"--out {out} is not empty (pass --overwrite)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is not a directory")


def load(src: str):
    """The checkpoint in its own class (``architectures``), offline (:mod:`nashmoe.hf`)."""
    from nashmoe.hf import load_checkpoint

    return load_checkpoint(src, progress=False)


def save(model, src: str, out: str) -> None:
    model.save_pretrained(out)
    for path in Path(src).iterdir():  # the tokenizer travels along
        if path.is_file() and (path.name.startswith("tokenizer") or path.name in TOKENIZER_FILES):
            shutil.copy2(path, Path(out) / path.name)


def run_safely(command: str, body) -> int:
    try:
        return body()
    except (ValueError, OSError, ImportError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"nashmoe {command}: error: {message}", file=sys.stderr)
        return 2
