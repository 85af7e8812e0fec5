"""One entry point for the trainer: a corpus split into train / valid / test token tensors.

>>> from nashmoe.data import load_corpus
>>> corpus = load_corpus("shakespeare")              # embedded, character level
>>> corpus.train.dtype, corpus.tokenizer.vocab_size
(torch.int64, 66)

Corpora and their defaults:

- ``"shakespeare"``: embedded in the package (no data directory); tokenizer ``"char"``,
  ``min_freq=2``, ``bpe_vocab_size=1024``.
- ``"brown"``: ``<data_dir>/brown/brown.zip``; tokenizer ``"word"``, ``min_freq=4``,
  ``bpe_vocab_size=8192``.

Tokenizers: ``"char"`` (characters of the training split, plus an unknown symbol), ``"word"``
(words of the training split seen at least ``min_freq`` times, plus ``<unk>`` and ``<eos>``;
tiny-shakespeare keeps case and splits punctuation off words, Brown is already tokenised and
lowercased), ``"bpe"`` (byte-level BPE with ``bpe_vocab_size`` ids trained on the training split
and cached under ``cache_dir``), ``"gpt2"`` (GPT-2's byte-level BPE, from
``<data_dir>/gpt2-bpe/``). Every vocabulary is built from the training split only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from nashmoe.data._bpe import BPETokenizer, cached_bpe, load_gpt2_tokenizer
from nashmoe.data._brown import BROWN_ZIP, brown_splits, brown_text
from nashmoe.data._char import CharTokenizer
from nashmoe.data._shakespeare import (
    SHAKESPEARE_RESOURCE,
    shakespeare_split_bounds,
    shakespeare_text,
)
from nashmoe.data._tokenizer import Tokenizer
from nashmoe.data._word import WordTokenizer

__all__ = [
    "CORPORA",
    "CORPUS_DEFAULTS",
    "SPLITS",
    "TOKENIZERS",
    "Corpus",
    "CorpusDefaults",
    "build_tokenizer",
    "corpus_texts",
    "load_corpus",
]

CORPORA = ("shakespeare", "brown")
TOKENIZERS = ("char", "word", "bpe", "gpt2")
SPLITS = ("train", "valid", "test")
#: Word pattern for tiny-shakespeare: words (with inner apostrophes) and single punctuation marks.
SHAKESPEARE_WORD_PATTERN = r"\w+(?:'\w+)*|[^\w\s]"


@dataclass(frozen=True)
class CorpusDefaults:
    """Per-corpus defaults of :func:`load_corpus`."""

    tokenizer: str
    min_freq: int
    bpe_vocab_size: int


CORPUS_DEFAULTS: dict[str, CorpusDefaults] = {
    "shakespeare": CorpusDefaults(tokenizer="char", min_freq=2, bpe_vocab_size=1024),
    "brown": CorpusDefaults(tokenizer="word", min_freq=4, bpe_vocab_size=8192),
}

_SPLIT_RULES = {
    "shakespeare": (
        "contiguous by characters: with n characters, train = [0, n*9//10), "
        "valid = [n*9//10, n*19//20), test = [n*19//20, n)  (90% / 5% / 5%)"
    ),
    "brown": (
        "by file, stratified by genre: within each genre (files sorted by name, i = 0..n-1), "
        "k = max(1, floor(n/10 + 1/2)); test = files i = floor((j+1)n/k) - 1 for j < k, "
        "valid = the file just before each test file, train = the rest (about 80/10/10)"
    ),
}
_NORMALISATION = {
    "shakespeare": "raw text as shipped (UTF-8, case kept)",
    "brown": (
        "POS tags stripped (text after the last '/'), lowercased, one sentence per line with "
        "words joined by single spaces; files in name order"
    ),
}


@dataclass(frozen=True)
class Corpus:
    """A tokenised corpus.

    Attributes:
        name: ``"shakespeare"`` or ``"brown"``.
        train, valid, test: 1-D ``torch.long`` tensors of token ids.
        tokenizer: the :class:`Tokenizer` that produced them (``tokenizer.to_dict()`` restores it).
        info: JSON-serialisable description: corpus, tokenizer, vocabulary size, split rule,
            normalisation, per-split sizes, OOV rates and the options used.
    """

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    tokenizer: Tokenizer
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> torch.Tensor:
        """The token tensor of split ``name`` (``"train"``, ``"valid"`` or ``"test"``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r} (choose from {', '.join(SPLITS)})")
        return getattr(self, name)


def _check_choice(kind: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r} (choose from {', '.join(choices)})")


def corpus_texts(
    name: str, *, data_dir: str | os.PathLike[str] | None = None
) -> tuple[dict[str, str], dict[str, Any]]:
    """The normalised text of each split, and facts about the split (JSON-serialisable).

    Returns:
        ``(texts, details)``: ``texts[split]`` is the text a tokenizer encodes; ``details`` holds
        ``"source"``, ``"split_rule"``, ``"normalisation"`` and per-split ``"chars"`` (plus
        ``"files"``, ``"sentences"``, ``"words"`` and the valid/test file ids for Brown).
    """
    _check_choice("corpus", name, CORPORA)
    details: dict[str, Any] = {
        "split_rule": _SPLIT_RULES[name],
        "normalisation": _NORMALISATION[name],
    }
    if name == "shakespeare":
        text = shakespeare_text()
        bounds = shakespeare_split_bounds(len(text))
        texts = {k: text[s:e] for k, (s, e) in bounds.items()}
        details["source"] = f"embedded: nashmoe/data/{SHAKESPEARE_RESOURCE}"
        details["splits"] = {k: {"chars": e - s, "range": [s, e]} for k, (s, e) in bounds.items()}
    else:
        docs = brown_splits(data_dir)
        texts = {k: brown_text(v) for k, v in docs.items()}
        details["source"] = BROWN_ZIP
        details["splits"] = {
            k: {
                "chars": len(texts[k]),
                "files": len(v),
                "sentences": sum(len(d.sentences) for d in v),
                "words": sum(d.num_words for d in v),
            }
            for k, v in docs.items()
        }
        details["files"] = {k: [d.fileid for d in docs[k]] for k in ("valid", "test")}
    for k in SPLITS:
        details["splits"][k]["sha256"] = hashlib.sha256(texts[k].encode("utf-8")).hexdigest()
    return texts, details


def build_tokenizer(
    corpus: str,
    tokenizer: str,
    train_text: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    min_freq: int | None = None,
    bpe_vocab_size: int | None = None,
) -> Tokenizer:
    """The ``tokenizer`` kind for ``corpus``, built from its training text ``train_text``."""
    _check_choice("corpus", corpus, CORPORA)
    _check_choice("tokenizer", tokenizer, TOKENIZERS)
    d = CORPUS_DEFAULTS[corpus]
    if tokenizer == "char":
        return CharTokenizer.train(train_text)
    if tokenizer == "word":
        if corpus == "brown":  # already tokenised and lowercased
            return WordTokenizer.build(train_text, min_freq=min_freq or d.min_freq, lowercase=True)
        return WordTokenizer.build(
            train_text, min_freq=min_freq or d.min_freq, pattern=SHAKESPEARE_WORD_PATTERN
        )
    if tokenizer == "bpe":
        return cached_bpe(
            train_text,
            corpus=corpus,
            split="train",
            vocab_size=bpe_vocab_size or d.bpe_vocab_size,
            cache_dir=cache_dir,
        )
    return load_gpt2_tokenizer(data_dir)


def _encode(tok: Tokenizer, corpus: str, text: str) -> torch.Tensor:
    if isinstance(tok, BPETokenizer) and corpus == "brown":
        # Normalised lines (no leading/trailing spaces): batch encoding equals whole-text encoding.
        ids = tok.encode_lines(text.splitlines(keepends=True))
    else:
        ids = tok.encode(text)
    return torch.tensor(ids, dtype=torch.long)


def load_corpus(
    name: str = "shakespeare",
    *,
    tokenizer: str | Tokenizer | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    min_freq: int | None = None,
    bpe_vocab_size: int | None = None,
) -> Corpus:
    """Load corpus ``name`` and tokenise its three splits.

    Args:
        name: ``"shakespeare"`` (embedded, the default) or ``"brown"`` (needs the data directory).
        tokenizer: ``"char"``, ``"word"``, ``"bpe"`` or ``"gpt2"`` (default per corpus: char for
            shakespeare, word for brown), or an existing :class:`Tokenizer` (e.g. restored from
            a checkpoint) to encode with instead of building one.
        data_dir: the data directory (default ``$NASHMOE_DATA``); read for brown and gpt2 only.
        cache_dir: where trained BPE tokenizers are cached (default ``$NASHMOE_CACHE`` or
            ``~/.cache/nashmoe``).
        min_freq: word tokenizer frequency cut-off on the training split (default 2 for
            shakespeare, 4 for brown); ignored by the other tokenizers.
        bpe_vocab_size: ids of the trained BPE (default 1024 for shakespeare, 8192 for brown);
            ignored by the other tokenizers.

    Raises:
        ValueError: unknown corpus or tokenizer, or a bad ``min_freq`` / ``bpe_vocab_size``.
        FileNotFoundError: a data file is missing (the message names it and where it looked).
        ImportError: ``"bpe"`` / ``"gpt2"`` without the ``tokenizers`` package (``nashmoe[train]``).
    """
    _check_choice("corpus", name, CORPORA)
    defaults = CORPUS_DEFAULTS[name]
    if tokenizer is None:
        tokenizer = defaults.tokenizer
    if isinstance(tokenizer, str):
        _check_choice("tokenizer", tokenizer, TOKENIZERS)
    elif not isinstance(tokenizer, Tokenizer):
        raise ValueError(
            f"tokenizer must be a name ({', '.join(TOKENIZERS)}) or a Tokenizer, got {tokenizer!r}"
        )
    if min_freq is not None and (
        not isinstance(min_freq, int) or isinstance(min_freq, bool) or min_freq < 1
    ):
        raise ValueError(f"min_freq must be a positive integer, got {min_freq!r}")
    if bpe_vocab_size is not None and (
        not isinstance(bpe_vocab_size, int)
        or isinstance(bpe_vocab_size, bool)
        or bpe_vocab_size < 258
    ):
        raise ValueError(f"bpe_vocab_size must be an integer >= 258, got {bpe_vocab_size!r}")

    texts, details = corpus_texts(name, data_dir=data_dir)
    options: dict[str, Any] = {}
    if isinstance(tokenizer, str):
        kind = tokenizer
        tok = build_tokenizer(
            name,
            kind,
            texts["train"],
            data_dir=data_dir,
            cache_dir=cache_dir,
            min_freq=min_freq,
            bpe_vocab_size=bpe_vocab_size,
        )
        if kind == "word":
            options["min_freq"] = min_freq or defaults.min_freq
        elif kind == "bpe":
            options["bpe_vocab_size"] = bpe_vocab_size or defaults.bpe_vocab_size
    else:
        tok = tokenizer
        options["tokenizer_given"] = True

    tensors = {k: _encode(tok, name, texts[k]) for k in SPLITS}
    unk, eos = tok.unk_id, tok.eos_id
    oov: dict[str, float] = {}
    for k, ids in tensors.items():
        scored = ids.numel() - (int((ids == eos).sum()) if eos is not None else 0)
        n_unk = int((ids == unk).sum()) if unk is not None else 0
        oov[k] = n_unk / scored if scored else 0.0
        details["splits"][k]["tokens"] = ids.numel()
    info: dict[str, Any] = {
        "corpus": name,
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        **options,
        "source": details.pop("source"),
        "normalisation": details.pop("normalisation"),
        "split_rule": details.pop("split_rule"),
        "oov_rate": oov,
        "oov_rule": "share of tokens that are the unknown id, end-of-sentence tokens excluded",
        **details,
    }
    return Corpus(name, tensors["train"], tensors["valid"], tensors["test"], tok, info)
