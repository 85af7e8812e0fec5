"""The small interface every tokenizer implements, and restoring one from its JSON form.

A tokenizer maps text to a list of integer ids in ``[0, vocab_size)`` and back. ``to_dict()``
returns a JSON-serialisable dict that is self-contained (no data directory is needed to restore
it), so a checkpoint can store it and ``tokenizer_from_dict`` rebuilds the same tokenizer for
generation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["Tokenizer", "register_tokenizer", "tokenizer_from_dict"]


@runtime_checkable
class Tokenizer(Protocol):
    """What the model, trainer and ``nashmoe generate`` need from a tokenizer.

    Attributes:
        name: short name (``"char"``, ``"word"``, ``"bpe"``, ``"gpt2"``).
        vocab_size: number of ids; every id returned by ``encode`` is in ``[0, vocab_size)``.
        eos_id: id of the end-of-sentence/text token, or ``None`` when there is none.
        unk_id: id that unknown symbols map to, or ``None`` when every input is representable.
    """

    name: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def unk_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


_REGISTRY: dict[str, Callable[[Mapping[str, Any]], Tokenizer]] = {}


def register_tokenizer(
    kind: str,
) -> Callable[[type], type]:
    """Class decorator: ``from_dict`` of the class restores dicts whose ``"type"`` is ``kind``."""

    def wrap(cls: type) -> type:
        _REGISTRY[kind] = cls.from_dict  # type: ignore[attr-defined]
        return cls

    return wrap


def tokenizer_from_dict(state: Mapping[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from ``tokenizer.to_dict()`` (e.g. read back from a checkpoint)."""
    kind = state.get("type") if isinstance(state, Mapping) else None
    if kind not in _REGISTRY:
        raise ValueError(
            f"unknown tokenizer type {kind!r} in tokenizer state (known: {sorted(_REGISTRY)})"
        )
    return _REGISTRY[kind](state)


def check_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    """``ids`` as a list of Python ints, or a ValueError naming the first id out of range."""
    if hasattr(ids, "tolist"):  # a torch tensor or numpy array
        ids = ids.tolist()
    out = [int(i) for i in ids]
    for i in out:
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} is out of range for a vocabulary of {vocab_size}")
    return out
