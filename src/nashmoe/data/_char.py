"""Character-level tokenizer (one id per Unicode character), as in char-rnn / nanoGPT."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nashmoe.data._tokenizer import check_ids, register_tokenizer

__all__ = ["CharTokenizer"]


@register_tokenizer("char")
class CharTokenizer:
    """Characters to ids; characters outside the vocabulary map to ``unk_id``.

    The vocabulary is the given characters in order, followed by the unknown symbol ``"\\ufffd"``
    (the Unicode replacement character) unless it is already among them; ``decode`` renders
    ``unk_id`` as that symbol. ``CharTokenizer.train(text)`` uses the sorted distinct
    characters of ``text``.
    """

    UNK = "\ufffd"
    name = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        itos = list(chars)
        for c in itos:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"a character vocabulary needs single characters, got {c!r}")
        if len(set(itos)) != len(itos):
            raise ValueError("the character vocabulary has duplicates")
        if self.UNK not in itos:
            itos.append(self.UNK)
        self._itos = itos
        self._stoi = {c: i for i, c in enumerate(itos)}
        self._unk = self._stoi[self.UNK]

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        """Vocabulary = the sorted distinct characters of ``text`` (plus the unknown symbol)."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    @property
    def eos_id(self) -> int | None:
        return None

    @property
    def unk_id(self) -> int:
        return self._unk

    @property
    def chars(self) -> list[str]:
        """The vocabulary, id order."""
        return list(self._itos)

    def encode(self, text: str) -> list[int]:
        stoi, unk = self._stoi, self._unk
        return [stoi.get(c, unk) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        itos = self._itos
        return "".join(itos[i] for i in check_ids(ids, len(itos)))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "name": self.name, "chars": "".join(self._itos)}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> CharTokenizer:
        if state.get("type") != "char" or not isinstance(state.get("chars"), str):
            raise ValueError("not a character tokenizer state (needs type='char' and 'chars')")
        return cls(state["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
