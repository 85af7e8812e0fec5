"""download_data: fetching a data file from a URL into the data directory, checksum checked."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from nashmoe.data import DATA_SOURCES, download_data


@pytest.fixture
def shakespeare_url() -> str:
    ref = resources.files("nashmoe.data").joinpath("corpora/tinyshakespeare.txt")
    return Path(str(ref)).resolve().as_uri()


def test_download_from_url_with_checksum(tmp_path, shakespeare_url):
    path = download_data("tinyshakespeare/input.txt", tmp_path / "data", url=shakespeare_url)
    assert path == tmp_path / "data" / "tinyshakespeare" / "input.txt"
    assert path.stat().st_size == 1_115_394
    # already there: kept and checked, not fetched again
    again = download_data("tinyshakespeare/input.txt", tmp_path / "data", url="file:///nonexistent")
    assert again == path
    assert [p.name for p in path.parent.iterdir()] == ["input.txt"]  # no temporary files left


def test_download_checksum_mismatch_writes_nothing(tmp_path, shakespeare_url):
    with pytest.raises(ValueError, match=r"checksum mismatch for 'brown/brown\.zip'"):
        download_data("brown/brown.zip", tmp_path, url=shakespeare_url)
    assert list((tmp_path / "brown").iterdir()) == []


def test_download_existing_corrupt_file(tmp_path):
    target = tmp_path / "gpt2-bpe" / "vocab.bpe"
    target.parent.mkdir()
    target.write_text("corrupt")
    with pytest.raises(ValueError, match="force=True"):
        download_data("gpt2-bpe/vocab.bpe", tmp_path)


def test_download_needs_a_known_source_or_url(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"no known source for 'wikitext/train\.txt'"):
        download_data("wikitext/train.txt", tmp_path)
    monkeypatch.delenv("NASHMOE_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="NASHMOE_DATA"):
        download_data("brown/brown.zip")
    assert set(DATA_SOURCES) == {
        "brown/brown.zip",
        "gpt2-bpe/encoder.json",
        "gpt2-bpe/vocab.bpe",
        "tinyshakespeare/input.txt",
    }
