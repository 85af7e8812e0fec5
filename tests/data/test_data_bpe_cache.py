"""Trained BPE tokenizers: trained on the training split only, cached on disk and reused."""

from __future__ import annotations

import pytest

pytest.importorskip("tokenizers")

from nashmoe.data import _bpe, cached_bpe, corpus_texts, load_corpus, resolve_cache_dir, train_bpe


def _no_training(*args, **kwargs):
    raise AssertionError("the tokenizer was retrained instead of read from the cache")


@pytest.fixture(scope="module")
def small_text() -> str:
    texts, _ = corpus_texts("shakespeare")
    return texts["train"][:40_000]


def test_cache_is_reused_not_retrained(tmp_path, monkeypatch, small_text):
    tok = cached_bpe(small_text, corpus="shakespeare", vocab_size=300, cache_dir=tmp_path)
    files = list((tmp_path / "bpe").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("shakespeare-train-v300-")
    mtime = files[0].stat().st_mtime_ns
    monkeypatch.setattr(_bpe, "train_bpe", _no_training)
    again = cached_bpe(small_text, corpus="shakespeare", vocab_size=300, cache_dir=tmp_path)
    assert again.to_dict() == tok.to_dict()
    assert files[0].stat().st_mtime_ns == mtime
    # a different vocabulary size, split or text is a different cache entry
    with pytest.raises(AssertionError, match="retrained"):
        cached_bpe(small_text, corpus="shakespeare", vocab_size=301, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="retrained"):
        cached_bpe(
            small_text, corpus="shakespeare", split="validation", vocab_size=300, cache_dir=tmp_path
        )
    with pytest.raises(AssertionError, match="retrained"):
        cached_bpe(small_text + "x", corpus="shakespeare", vocab_size=300, cache_dir=tmp_path)


def test_corrupt_cache_file_is_retrained(tmp_path, small_text):
    cached_bpe(small_text, corpus="shakespeare", vocab_size=280, cache_dir=tmp_path)
    (path,) = (tmp_path / "bpe").glob("*.json")
    path.write_text("{ not json")
    tok = cached_bpe(small_text, corpus="shakespeare", vocab_size=280, cache_dir=tmp_path)
    assert tok.vocab_size == 280 and path.read_text().startswith("{")


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NASHMOE_CACHE", str(tmp_path / "envcache"))
    assert resolve_cache_dir() == tmp_path / "envcache"
    assert (tmp_path / "envcache").is_dir()
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("NASHMOE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "nashmoe"


def test_load_corpus_bpe_trains_on_train_split_and_reuses_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NASHMOE_CACHE", str(tmp_path))
    first = load_corpus("shakespeare", tokenizer="bpe", bpe_vocab_size=400)
    assert first.info["bpe_vocab_size"] == 400 and first.vocab_size == 400
    (path,) = (tmp_path / "bpe").glob("shakespeare-train-v400-*.json")
    texts, _ = corpus_texts("shakespeare")
    assert train_bpe([texts["train"]], vocab_size=400).to_dict() == first.tokenizer.to_dict()
    assert first.tokenizer.decode(first.validation) == texts["validation"]
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(_bpe, "train_bpe", _no_training)
    second = load_corpus("shakespeare", tokenizer="bpe", bpe_vocab_size=400)
    assert second.train.equal(first.train) and path.stat().st_mtime_ns == mtime
