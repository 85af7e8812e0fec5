"""Word-level tokenizer with a frequency cut-off and ``<unk>``, sentence ends as ``<eos>``.

Text is read line by line: each line is split into words (on whitespace, or by a regular
expression), optionally lowercased, and every newline becomes one ``<eos>`` token, as in the
Penn Treebank / WikiText language-modelling setup (Mikolov et al. 2010; Merity et al. 2017).
The vocabulary keeps the words seen at least ``min_freq`` times in the text it is built on
(the training split only); rarer and unseen words map to ``<unk>`` (Bengio et al., JMLR 2003,
merged words of frequency <= 3 on the Brown corpus the same way).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nashmoe.data._tokenizer import check_ids, register_tokenizer

__all__ = ["WordTokenizer"]


@register_tokenizer("word")
class WordTokenizer:
    """Words to ids. Ids 0 and 1 are ``<unk>`` and ``<eos>``; the rest follow ``words``.

    Args:
        words: the vocabulary words (without the two special tokens), in id order.
        lowercase: lowercase text before looking words up.
        pattern: a regular expression whose matches are the words of a line
            (``re.findall``); ``None`` splits on whitespace.

    ``decode`` joins the words of a line with single spaces and renders ``<eos>`` as a newline,
    so ``decode(encode(t)) == t`` for text that is already in normal form (single spaces, no
    spaces at line ends, lowercased if ``lowercase``, every word in the vocabulary).
    """

    UNK = "<unk>"
    EOS = "<eos>"
    name = "word"

    def __init__(
        self, words: Iterable[str], *, lowercase: bool = False, pattern: str | None = None
    ) -> None:
        itos = [self.UNK, self.EOS]
        for w in words:
            if not isinstance(w, str) or not w or any(c.isspace() for c in w):
                raise ValueError(
                    f"a vocabulary word must be a non-empty string without spaces: {w!r}"
                )
            if w in (self.UNK, self.EOS):
                raise ValueError(f"{w!r} is a special token; do not list it among the words")
            itos.append(w)
        if len(set(itos)) != len(itos):
            raise ValueError("the word vocabulary has duplicates")
        self._itos = itos
        self._stoi = {w: i for i, w in enumerate(itos)}
        self.lowercase = bool(lowercase)
        self.pattern = pattern
        self._regex = re.compile(pattern) if pattern is not None else None

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        text: str,
        *,
        min_freq: int = 1,
        lowercase: bool = False,
        pattern: str | None = None,
    ) -> WordTokenizer:
        """Vocabulary of the words of ``text`` seen at least ``min_freq`` times, ordered by
        decreasing count, ties broken alphabetically (deterministic)."""
        if not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq must be a positive integer, got {min_freq!r}")
        probe = cls([], lowercase=lowercase, pattern=pattern)
        counts = Counter(w for line in text.split("\n") for w in probe._split_line(line))
        kept = sorted(
            (w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w)
        )
        kept = [w for w in kept if w not in (cls.UNK, cls.EOS)]
        return cls(kept, lowercase=lowercase, pattern=pattern)

    # ------------------------------------------------------------------ interface
    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    @property
    def eos_id(self) -> int:
        return 1

    @property
    def unk_id(self) -> int:
        return 0

    @property
    def words(self) -> list[str]:
        """The vocabulary in id order, special tokens included."""
        return list(self._itos)

    def _split_line(self, line: str) -> list[str]:
        if self.lowercase:
            line = line.lower()
        return self._regex.findall(line) if self._regex is not None else line.split()

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` as strings (words, with ``<eos>`` for every newline)."""
        out: list[str] = []
        lines = text.split("\n")
        for k, line in enumerate(lines):
            out.extend(self._split_line(line))
            if k < len(lines) - 1:
                out.append(self.EOS)
        return out

    def encode(self, text: str) -> list[int]:
        stoi = self._stoi
        out: list[int] = []
        lines = text.split("\n")
        last = len(lines) - 1
        for k, line in enumerate(lines):
            out.extend([stoi.get(w, 0) for w in self._split_line(line)])
            if k < last:
                out.append(1)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        parts: list[str] = []
        at_line_start = True
        for i in check_ids(ids, len(self._itos)):
            if i == 1:
                parts.append("\n")
                at_line_start = True
            else:
                if not at_line_start:
                    parts.append(" ")
                parts.append(self._itos[i])
                at_line_start = False
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "word",
            "name": self.name,
            "lowercase": self.lowercase,
            "pattern": self.pattern,
            "words": self._itos[2:],
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> WordTokenizer:
        if state.get("type") != "word" or not isinstance(state.get("words"), list):
            raise ValueError("not a word tokenizer state (needs type='word' and 'words')")
        return cls(
            state["words"], lowercase=bool(state.get("lowercase")), pattern=state.get("pattern")
        )

    def __repr__(self) -> str:
        return (
            f"WordTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
            f"pattern={self.pattern!r})"
        )
