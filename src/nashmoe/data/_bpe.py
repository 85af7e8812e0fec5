"""Byte-level BPE tokenizers: trained on a training split, or GPT-2's own.

Byte-level BPE (Sennrich et al., ACL 2016; byte-level variant of GPT-2, Radford et al. 2019):
text is split with GPT-2's pre-tokenisation regex, mapped to bytes, and merged by learned merge
rules, so every string is representable (no ``<unk>``) and ``decode(encode(t)) == t``.
Both kinds wrap a Hugging Face ``tokenizers.Tokenizer`` (the ``train`` extra), imported lazily.

Trained tokenizers are cached on disk as ``<cache_dir>/bpe/<corpus>-<split>-v<vocab>-<hash>.json``
where ``<hash>`` covers the training text and the training settings, so a second load reuses
the file instead of retraining.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nashmoe._optional import require
from nashmoe.data._cache import atomic_write_text, resolve_cache_dir
from nashmoe.data._tokenizer import check_ids, register_tokenizer

__all__ = [
    "ENDOFTEXT",
    "GPT2_FILES",
    "BPETokenizer",
    "bpe_cache_path",
    "cached_bpe",
    "load_gpt2_tokenizer",
    "train_bpe",
]

ENDOFTEXT = "<|endoftext|>"
GPT2_FILES = ("gpt2-bpe/encoder.json", "gpt2-bpe/vocab.bpe")
# Bumped whenever the training recipe below changes, so stale cache files are not reused.
_RECIPE_VERSION = 1
_MIN_PAIR_FREQUENCY = 2


def _tokenizers() -> Any:
    return require("tokenizers", extra="train", purpose="byte-level BPE tokenizers")


def _byte_level(tok: Any) -> None:
    tk = _tokenizers()
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()


@register_tokenizer("bpe")
class BPETokenizer:
    """A byte-level BPE tokenizer (a wrapped ``tokenizers.Tokenizer``).

    Args:
        backend: the ``tokenizers.Tokenizer``.
        name: ``"bpe"`` for one trained here, ``"gpt2"`` for GPT-2's vocabulary.
    """

    def __init__(self, backend: Any, *, name: str = "bpe") -> None:
        self._tok = backend
        self.name = name
        self._eos = backend.token_to_id(ENDOFTEXT)

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def eos_id(self) -> int | None:
        return self._eos

    @property
    def unk_id(self) -> int | None:
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def encode_lines(self, lines: Sequence[str]) -> list[int]:
        """``encode("".join(lines))``, encoded in parallel batches.

        Equal to encoding the joined text when every line ends with its newline and has no
        other leading or trailing whitespace (GPT-2's pre-tokenisation then always cuts right
        after each newline), which holds for the normalised Brown text."""
        out: list[int] = []
        for enc in self._tok.encode_batch(list(lines)):
            out.extend(enc.ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(check_ids(ids, self.vocab_size), skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "bpe", "name": self.name, "tokenizer_json": self._tok.to_str()}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> BPETokenizer:
        if state.get("type") != "bpe" or not isinstance(state.get("tokenizer_json"), str):
            raise ValueError("not a BPE tokenizer state (needs type='bpe' and 'tokenizer_json')")
        tok = _tokenizers().Tokenizer.from_str(state["tokenizer_json"])
        return cls(tok, name=str(state.get("name", "bpe")))

    def __repr__(self) -> str:
        return f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


def train_bpe(texts: Iterable[str], *, vocab_size: int) -> BPETokenizer:
    """Train a byte-level BPE tokenizer with ``vocab_size`` ids on ``texts``.

    The vocabulary is ``<|endoftext|>`` (id 0), the 256 byte symbols, then the merges, learned
    from pairs seen at least twice (so a small text may give fewer than ``vocab_size`` ids).
    """
    if not isinstance(vocab_size, int) or vocab_size < 257 + 1:
        raise ValueError(
            f"bpe vocab_size must be an integer >= 258 (256 bytes, {ENDOFTEXT}, one merge), "
            f"got {vocab_size!r}"
        )
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    _byte_level(tok)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=_MIN_PAIR_FREQUENCY,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok, name="bpe")


def bpe_cache_path(
    text: str, *, corpus: str, split: str, vocab_size: int, cache_dir: str | os.PathLike[str] | None
) -> Path:
    """Where ``cached_bpe`` keeps the tokenizer trained on ``text`` with these settings."""
    h = hashlib.sha256()
    h.update(json.dumps([_RECIPE_VERSION, _MIN_PAIR_FREQUENCY, corpus, split, vocab_size]).encode())
    h.update(text.encode("utf-8"))
    key = f"{corpus}-{split}-v{vocab_size}-{h.hexdigest()[:16]}.json"
    return resolve_cache_dir(cache_dir) / "bpe" / key


def cached_bpe(
    text: str,
    *,
    corpus: str,
    split: str = "train",
    vocab_size: int,
    cache_dir: str | os.PathLike[str] | None = None,
) -> BPETokenizer:
    """A BPE tokenizer trained on ``text`` (the ``split`` of ``corpus``), from the disk cache
    when it holds one for the same corpus, split, vocabulary size and text; else trained with
    :func:`train_bpe` and written to the cache atomically."""
    path = bpe_cache_path(
        text, corpus=corpus, split=split, vocab_size=vocab_size, cache_dir=cache_dir
    )
    if path.is_file():
        try:
            return BPETokenizer(_tokenizers().Tokenizer.from_file(str(path)), name="bpe")
        except Exception:  # a corrupt or foreign file: retrain and overwrite it
            pass
    tok = train_bpe([text], vocab_size=vocab_size)
    atomic_write_text(path, tok.backend.to_str())
    return tok


def load_gpt2_tokenizer(data_dir: str | os.PathLike[str] | None = None) -> BPETokenizer:
    """GPT-2's byte-level BPE (50,257 ids, ``<|endoftext|>`` = 50256) from ``encoder.json`` and
    ``vocab.bpe`` in ``<data_dir>/gpt2-bpe/`` (``data_dir`` or ``$NASHMOE_DATA``)."""
    from nashmoe.data._files import require_data_file

    vocab, merges = (require_data_file(rel, data_dir, what="GPT-2's BPE") for rel in GPT2_FILES)
    tk = _tokenizers()
    for path in (vocab, merges):
        if path.stat().st_size == 0:
            raise ValueError(f"GPT-2's BPE file {str(path)!r} is empty")
    try:
        model = tk.models.BPE.from_file(str(vocab), str(merges))
    except Exception as e:  # the tokenizers library raises a bare Exception
        raise ValueError(
            f"GPT-2's BPE files {str(vocab)!r} and {str(merges)!r} cannot be read ({e})"
        ) from None
    tok = tk.Tokenizer(model)
    _byte_level(tok)
    tok.add_special_tokens([ENDOFTEXT])
    return BPETokenizer(tok, name="gpt2")
