"""Minimal tweet tokenisation for the hate-speech L2D model (no external tokenizer needed).

Lower-cased word tokens (mentions, URLs and HTML entities collapsed to placeholders) plus word
bigrams; a vocabulary built on the training split; index 0 is padding and 1 is unknown.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["build_vocab", "encode", "tokenize"]

_URL = re.compile(r"https?://\S+")
_MENTION = re.compile(r"@\w+")
_ENTITY = re.compile(r"&\w+;|&#\d+;")
_WORD = re.compile(r"[a-z0-9']+|[!?]")


def tokenize(text: str, *, bigrams: bool = True) -> list[str]:
    """Word tokens of a tweet, plus ``a_b`` bigrams when ``bigrams``."""
    text = _URL.sub(" URLTOKEN ", text)
    text = _MENTION.sub(" MENTIONTOKEN ", text)
    text = _ENTITY.sub(" ", text).lower()
    words = _WORD.findall(text)
    if bigrams:
        words = words + [f"{a}_{b}" for a, b in itertools.pairwise(words)]
    return words


def build_vocab(
    texts: Sequence[str], *, min_count: int = 2, max_size: int = 50_000
) -> dict[str, int]:
    """Token → index (from 2; 0 = padding, 1 = unknown), most frequent first."""
    if min_count < 1 or max_size < 1:
        raise ValueError(f"min_count and max_size must be positive, got {min_count}, {max_size}")
    counts = Counter(tok for t in texts for tok in tokenize(t))
    kept = [
        tok for tok, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count
    ]
    return {tok: i + 2 for i, tok in enumerate(kept[:max_size])}


def encode(texts: Sequence[str], vocab: dict[str, int], *, max_len: int = 64) -> Tensor:
    """int64 [N, max_len]: token indices, truncated and right-padded with 0."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    out = torch.zeros(len(texts), max_len, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [vocab.get(tok, 1) for tok in tokenize(t)][:max_len]
        if ids:
            out[i, : len(ids)] = torch.tensor(ids)
    return out
