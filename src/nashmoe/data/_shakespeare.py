"""tiny-shakespeare, the default corpus, shipped inside the package.

1,115,394 characters of Shakespeare (Karpathy's char-rnn ``input.txt``; public domain text),
stored as ``nashmoe/data/corpora/tinyshakespeare.txt``, so it needs no data directory.

Split (contiguous, by characters, no shuffling): with ``n`` characters,
``train = text[0 : n*9//10]``, ``valid = text[n*9//10 : n*19//20]``, ``test = text[n*19//20 : n]``
(90% / 5% / 5%; for the shipped file: 1,003,854 / 55,770 / 55,770 characters, boundaries
1,003,854 and 1,059,624). The boundaries fall mid-speech; each split is tokenised on its own.

Token counts (train / valid / test) and vocabulary, all vocabularies from the training split:
``char`` 1,003,854 / 55,770 / 55,770, 66 ids (65 characters and the unknown symbol, unused);
``word`` (case kept, punctuation split off, ``min_freq=2``, ``<eos>`` per line) 263,144 /
15,322 / 15,128, 7,115 ids, OOV valid 6.08%, test 7.99%; ``bpe`` (1024) 411,268 / 24,517 /
24,906; ``gpt2`` 301,966 / 18,066 / 17,995.
"""

from __future__ import annotations

from importlib import resources

__all__ = [
    "SHAKESPEARE_RESOURCE",
    "shakespeare_split_bounds",
    "shakespeare_splits",
    "shakespeare_text",
]

SHAKESPEARE_RESOURCE = "corpora/tinyshakespeare.txt"
SPLITS = ("train", "validation", "test")


def shakespeare_text() -> str:
    """The whole embedded tiny-shakespeare text."""
    ref = resources.files("nashmoe.data").joinpath(SHAKESPEARE_RESOURCE)
    try:
        return ref.read_text(encoding="utf-8")
    except FileNotFoundError as e:  # a broken install
        raise FileNotFoundError(
            f"the embedded corpus {SHAKESPEARE_RESOURCE!r} is missing from the installed "
            f"nashmoe package (looked in {ref}); reinstall nashmoe"
        ) from e


def shakespeare_split_bounds(n: int) -> dict[str, tuple[int, int]]:
    """Character ranges ``[start, end)`` of the three splits of a text of ``n`` characters."""
    a, b = n * 9 // 10, n * 19 // 20
    return {"train": (0, a), "validation": (a, b), "test": (b, n)}


def shakespeare_splits() -> dict[str, str]:
    """The train / valid / test texts."""
    text = shakespeare_text()
    return {k: text[s:e] for k, (s, e) in shakespeare_split_bounds(len(text)).items()}
