"""``nashmoe data``: load a corpus and print its split statistics (optionally as JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nashmoe._argtypes import report_error
from nashmoe.data._corpus import CORPORA, SPLITS, TOKENIZERS, load_corpus

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus",
        default="shakespeare",
        metavar="NAME|PATH",
        help=f"{' or '.join(CORPORA)}, a text file, a directory with train/validation/test "
        "files, or datasets:PATH",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        metavar="KIND|PATH",
        help=f"{', '.join(TOKENIZERS)}, a tokenizer.json or a tokenizer directory; "
        "default: word for brown, char otherwise",
    )
    parser.add_argument("--data-dir", default=None, help="data directory (default $NASHMOE_DATA)")
    parser.add_argument("--cache-dir", default=None, help="BPE cache (default $NASHMOE_CACHE)")
    parser.add_argument("--min-freq", type=int, default=None, help="word vocabulary cut-off")
    parser.add_argument("--bpe-vocab-size", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write corpus.info here")


def run(args: argparse.Namespace) -> int:
    if args.json is not None and args.json.is_dir():
        return report_error("data", f"--json {args.json} is a directory")
    try:
        corpus = load_corpus(
            args.corpus,
            tokenizer=args.tokenizer,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            min_freq=args.min_freq,
            bpe_vocab_size=args.bpe_vocab_size,
        )
    except (OSError, ValueError, ImportError) as e:
        return report_error("data", e)
    info = corpus.info
    print(f"corpus {info['corpus']}  tokenizer {info['tokenizer']}  vocab {info['vocab_size']:,}")
    print(f"source: {info['source']}")
    print(f"split:  {info['split_rule']}")
    extra = [k for k in ("files", "sentences", "words") if k in info["splits"]["train"]]
    head = ["split", *extra, "chars", "tokens", "OOV"]
    print("".join(f"{h:>12}" for h in head))
    for s in SPLITS:
        row = info["splits"][s]
        cells = [s, *(f"{row[k]:,}" for k in [*extra, "chars", "tokens"])]
        cells.append(f"{100 * info['oov_rate'][s]:.2f}%")
        print("".join(f"{c:>12}" for c in cells))
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(info, indent=2) + "\n")
        except OSError as e:
            return report_error("data", f"--json {args.json}: {e.strerror or e}")
        print(f"wrote {args.json}")
    return 0
