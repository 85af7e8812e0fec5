"""Fixtures shared by the nashmoe.data tests: data checks and corpora loaded once per session.

``tests/conftest.py`` points ``NASHMOE_DATA`` at ../shared/data when it exists; tests that need a
data file skip with a clear reason when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest


def _need(relative: str) -> Path:
    root = os.environ.get("NASHMOE_DATA")
    path = Path(root) / relative if root else None
    if path is None or not path.exists():
        pytest.skip(f"data file {relative!r} not found (set NASHMOE_DATA)")
    return path


@pytest.fixture
def need_data() -> Callable[[str], Path]:
    """``need_data("brown/brown.zip")``: the file's path, or skip the test."""
    return _need


@pytest.fixture(scope="session")
def brown_word():
    """The Brown corpus with the default word tokenizer."""
    _need("brown/brown.zip")
    from nashmoe.data import load_corpus

    return load_corpus("brown")


@pytest.fixture(scope="session")
def brown_texts():
    """``(texts, details)`` of the normalised Brown splits."""
    _need("brown/brown.zip")
    from nashmoe.data import corpus_texts

    return corpus_texts("brown")


@pytest.fixture(scope="session")
def shakespeare_char():
    """The default corpus: embedded tiny-shakespeare, character level."""
    from nashmoe.data import load_corpus

    return load_corpus()


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    pytest.importorskip("tokenizers")
    _need("gpt2-bpe/encoder.json")
    _need("gpt2-bpe/vocab.bpe")
    from nashmoe.data import load_gpt2_tokenizer

    return load_gpt2_tokenizer()
