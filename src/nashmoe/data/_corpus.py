"""One entry point for the trainer: a corpus split into train / validation / test token tensors.

>>> from nashmoe.data import load_corpus
>>> corpus = load_corpus("shakespeare")              # embedded, character level
>>> corpus.train.dtype, corpus.tokenizer.vocab_size
(torch.int64, 66)

Corpora and their defaults:

- ``"shakespeare"``: embedded in the package (no data directory); tokenizer ``"char"``,
  ``min_freq=2``, ``bpe_vocab_size=1024``.
- ``"brown"``: ``<data_dir>/brown/brown.zip``; tokenizer ``"word"``, ``min_freq=4``,
  ``bpe_vocab_size=8192``.
- your own text: a text file, a directory of ``train`` / ``validation`` / ``test`` files, or
  ``datasets:PATH`` (see :mod:`nashmoe.data._textfiles`); tokenizer ``"char"``, ``min_freq=2``,
  ``bpe_vocab_size=1024``.

The split names are ``train``, ``validation`` and ``test`` (the Hugging Face names); ``valid`` is
accepted as an alias (``corpus.split("valid")``, ``corpus.valid``, deprecated).

Tokenizers: ``"char"`` (characters of the training split, plus an unknown symbol), ``"word"``
(words of the training split seen at least ``min_freq`` times, plus ``<unk>`` and ``<eos>``;
tiny-shakespeare keeps case and splits punctuation off words, Brown is already tokenised and
lowercased), ``"bpe"`` (byte-level BPE with ``bpe_vocab_size`` ids trained on the training split
and cached under ``cache_dir``), ``"gpt2"`` (GPT-2's byte-level BPE, from
``<data_dir>/gpt2-bpe/``), or a path: a ``tokenizer.json`` or a directory that
``transformers.AutoTokenizer`` reads (:mod:`nashmoe.data._pretrained`). Every vocabulary is built
from the training split only.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from nashmoe.data._bpe import BPETokenizer, cached_bpe, load_gpt2_tokenizer
from nashmoe.data._brown import BROWN_ZIP, brown_splits, brown_text
from nashmoe.data._char import CharTokenizer
from nashmoe.data._pretrained import (
    PretrainedTokenizer,
    is_tokenizer_path,
    load_pretrained_tokenizer,
)
from nashmoe.data._shakespeare import (
    SHAKESPEARE_RESOURCE,
    shakespeare_split_bounds,
    shakespeare_text,
)
from nashmoe.data._textfiles import check_corpus_spec, corpus_label, user_corpus_texts
from nashmoe.data._tokenizer import Tokenizer
from nashmoe.data._word import WordTokenizer

__all__ = [
    "CORPORA",
    "CORPUS_DEFAULTS",
    "SPLITS",
    "SPLIT_ALIASES",
    "TOKENIZERS",
    "Corpus",
    "CorpusDefaults",
    "build_tokenizer",
    "canonical_split",
    "check_tokenizer_spec",
    "corpus_texts",
    "load_corpus",
]

CORPORA = ("shakespeare", "brown")
TOKENIZERS = ("char", "word", "bpe", "gpt2")
SPLITS = ("train", "validation", "test")
#: Old split names that are still accepted.
SPLIT_ALIASES = {"valid": "validation"}
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
#: Defaults for your own text (a file, a directory or ``datasets:PATH``).
USER_DEFAULTS = CorpusDefaults(tokenizer="char", min_freq=2, bpe_vocab_size=1024)


def canonical_split(name: str) -> str:
    """``"validation"`` for ``"valid"``; the other names unchanged.

    Raises:
        ValueError: not a split name.
    """
    name = SPLIT_ALIASES.get(name, name)
    if name not in SPLITS:
        raise ValueError(
            f"unknown split {name!r} (choose from {', '.join(SPLITS)}; 'valid' also works)"
        )
    return name


def check_tokenizer_spec(spec: str | None) -> None:
    """Raise before any work for a ``--tokenizer`` that is neither a kind nor an existing path."""
    if spec is None or spec in TOKENIZERS:
        return
    if not isinstance(spec, str) or not is_tokenizer_path(spec):
        raise ValueError(
            f"unknown tokenizer {spec!r} (choose from {', '.join(TOKENIZERS)}, or give a "
            "tokenizer.json file or a tokenizer directory)"
        )
    if not os.path.exists(spec):
        raise FileNotFoundError(f"--tokenizer {spec}: no such file or directory")


def _defaults(name: str) -> CorpusDefaults:
    return CORPUS_DEFAULTS.get(name, USER_DEFAULTS)


_SPLIT_RULES = {
    "shakespeare": (
        "contiguous by characters: with n characters, train = [0, n*9//10), "
        "validation = [n*9//10, n*19//20), test = [n*19//20, n)  (90% / 5% / 5%)"
    ),
    "brown": (
        "by file, stratified by genre: within each genre (files sorted by name, i = 0..n-1), "
        "k = max(1, floor(n/10 + 1/2)); test = files i = floor((j+1)n/k) - 1 for j < k, "
        "validation = the file just before each test file, train = the rest (about 80/10/10)"
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
        name: ``"shakespeare"``, ``"brown"`` or the path of your own corpus.
        train, validation, test: 1-D ``torch.long`` tensors of token ids (``valid``: a
            deprecated alias of ``validation``).
        tokenizer: the :class:`Tokenizer` that produced them (``tokenizer.to_dict()`` restores it).
        info: JSON-serialisable description: corpus, tokenizer, vocabulary size, split rule,
            normalisation, per-split sizes, OOV rates and the options used.
    """

    name: str
    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    tokenizer: Tokenizer
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def valid(self) -> torch.Tensor:
        """Deprecated alias of :attr:`validation`."""
        warnings.warn(
            "Corpus.valid is deprecated; use Corpus.validation", DeprecationWarning, stacklevel=2
        )
        return self.validation

    def split(self, name: str) -> torch.Tensor:
        """The token tensor of split ``name`` (``"train"``, ``"validation"`` (or ``"valid"``),
        ``"test"``)."""
        return getattr(self, canonical_split(name))


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
    if name not in CORPORA:
        check_corpus_spec(name)
        return user_corpus_texts(name)
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
        details["files"] = {k: [d.fileid for d in docs[k]] for k in ("validation", "test")}
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
    """The ``tokenizer`` kind for ``corpus``, built from its training text ``train_text`` (or a
    ``tokenizer.json`` / tokenizer directory when ``tokenizer`` is a path)."""
    if corpus not in CORPORA:
        check_corpus_spec(corpus)
    if tokenizer not in TOKENIZERS:
        check_tokenizer_spec(tokenizer)
        return load_pretrained_tokenizer(tokenizer)
    d = _defaults(corpus)
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
            corpus=corpus_label(corpus),
            split="train",
            vocab_size=bpe_vocab_size or d.bpe_vocab_size,
            cache_dir=cache_dir,
        )
    return load_gpt2_tokenizer(data_dir)


def _encode(tok: Tokenizer, corpus: str, text: str) -> torch.Tensor:
    if (
        isinstance(tok, BPETokenizer)
        and not isinstance(tok, PretrainedTokenizer)
        and corpus == "brown"
    ):
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
        name: ``"shakespeare"`` (embedded, the default), ``"brown"`` (needs the data directory),
            or your own text: a text file, a directory with train / validation / test files,
            or ``"datasets:PATH"`` (read with the ``datasets`` package, local files only).
        tokenizer: ``"char"``, ``"word"``, ``"bpe"`` or ``"gpt2"`` (default per corpus: char for
            shakespeare and your own text, word for brown), a ``tokenizer.json`` path or a
            tokenizer directory (``AutoTokenizer``), or an existing :class:`Tokenizer` (e.g.
            restored from a checkpoint) to encode with instead of building one.
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
    if name not in CORPORA:
        check_corpus_spec(name)
    defaults = _defaults(name)
    if tokenizer is None:
        tokenizer = defaults.tokenizer
    if isinstance(tokenizer, str):
        check_tokenizer_spec(tokenizer)
    elif not isinstance(tokenizer, Tokenizer):
        raise ValueError(
            f"tokenizer must be a name ({', '.join(TOKENIZERS)}), a path or a Tokenizer, "
            f"got {tokenizer!r}"
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
        if kind not in TOKENIZERS:
            options["tokenizer_path"] = kind
        elif kind == "word":
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
    return Corpus(name, tensors["train"], tensors["validation"], tensors["test"], tok, info)
