"""Tokenizers from files: a ``tokenizer.json`` (Hugging Face ``tokenizers``) or a directory that
``transformers.AutoTokenizer.from_pretrained`` reads (a fast tokenizer; local files only).

Either way the tokenizer is kept as its ``tokenizer.json`` text, so a checkpoint restores it
without the original files (and without transformers)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nashmoe._optional import require
from nashmoe.data._bpe import BPETokenizer
from nashmoe.data._tokenizer import register_tokenizer

__all__ = ["PretrainedTokenizer", "is_tokenizer_path", "load_pretrained_tokenizer"]

_EOS = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
_UNK = ("<unk>", "[UNK]", "<|unk|>")


def _tokenizers() -> Any:
    return require("tokenizers", extra="train", purpose="--tokenizer tokenizer.json")


def _first_id(backend: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        i = backend.token_to_id(name)
        if i is not None:
            return int(i)
    return None


@register_tokenizer("pretrained")
class PretrainedTokenizer(BPETokenizer):
    """A tokenizer loaded from a ``tokenizer.json`` or an ``AutoTokenizer`` directory.

    Text is encoded without the tokenizer's own special tokens (no BOS per call); ``eos_id`` and
    ``unk_id`` are the tokenizer's end-of-text and unknown tokens when it has them.
    """

    def __init__(
        self,
        backend: Any,
        *,
        source: str = "",
        eos_id: int | None = None,
        unk_id: int | None = None,
    ) -> None:
        super().__init__(backend, name="pretrained")
        self.source = source
        self._eos = eos_id if eos_id is not None else _first_id(backend, _EOS)
        self._unk = unk_id if unk_id is not None else _first_id(backend, _UNK)

    @property
    def unk_id(self) -> int | None:
        return self._unk

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_lines(self, lines) -> list[int]:
        return self.encode("".join(lines))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "pretrained",
            "source": self.source,
            "eos_id": self._eos,
            "unk_id": self._unk,
            "tokenizer_json": self._tok.to_str(),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> PretrainedTokenizer:
        if state.get("type") != "pretrained" or not isinstance(state.get("tokenizer_json"), str):
            raise ValueError("not a pretrained tokenizer state (needs 'tokenizer_json')")
        backend = _tokenizers().Tokenizer.from_str(state["tokenizer_json"])
        return cls(
            backend,
            source=str(state.get("source", "")),
            eos_id=state.get("eos_id"),
            unk_id=state.get("unk_id"),
        )

    def __repr__(self) -> str:
        return f"PretrainedTokenizer(source={self.source!r}, vocab_size={self.vocab_size})"


def is_tokenizer_path(spec: str) -> bool:
    """Whether ``--tokenizer`` names a file or directory rather than a built-in kind."""
    return os.sep in spec or "/" in spec or spec.endswith(".json") or Path(spec).exists()


def load_pretrained_tokenizer(path: str | os.PathLike[str]) -> PretrainedTokenizer:
    """A :class:`PretrainedTokenizer` from a ``tokenizer.json`` file, or from a directory
    (``AutoTokenizer.from_pretrained(path, local_files_only=True)`` when transformers is installed,
    else the directory's ``tokenizer.json``).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file cannot be read as a tokenizer, or the tokenizer is not a fast one.
        ImportError: tokenizers (or, for a directory without tokenizer.json, transformers) is
            missing.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--tokenizer {path}: no such file or directory")
    tk = _tokenizers()
    if p.is_file():
        try:
            backend = tk.Tokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises a bare Exception
            raise ValueError(f"--tokenizer {path} is not a readable tokenizer.json ({e})") from None
        return PretrainedTokenizer(backend, source=str(p))
    try:
        import transformers  # noqa: F401
    except ImportError:
        if (p / "tokenizer.json").is_file():
            return load_pretrained_tokenizer(p / "tokenizer.json")
        raise ImportError(
            f"--tokenizer {path}: a directory without tokenizer.json needs transformers: "
            "pip install 'nashmoe[hf]'"
        ) from None
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # transformers raises OSError / ValueError / others
        raise ValueError(f"--tokenizer {path}: AutoTokenizer cannot load it ({e})") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"--tokenizer {path}: only fast tokenizers (with tokenizer.json) work")
    return PretrainedTokenizer(
        tk.Tokenizer.from_str(backend.to_str()),
        source=str(p),
        eos_id=hf.eos_token_id,
        unk_id=hf.unk_token_id,
    )
