"""load_corpus: the embedded default corpus, the shakespeare split, options and errors."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import pytest
import torch

from nashmoe.data import (
    CORPORA,
    TOKENIZERS,
    CharTokenizer,
    WordTokenizer,
    corpus_texts,
    load_corpus,
    shakespeare_split_bounds,
    shakespeare_text,
    tokenizer_from_dict,
)

SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_embedded_corpus_is_found_by_importlib_resources():
    ref = resources.files("nashmoe.data").joinpath("corpora/tinyshakespeare.txt")
    assert ref.is_file()
    text = shakespeare_text()
    assert len(text) == 1_115_394
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == SHAKESPEARE_SHA256


def test_shakespeare_split_is_contiguous_disjoint_and_covering():
    for n in (1_115_394, 20, 21, 100, 1001):
        b = shakespeare_split_bounds(n)
        assert b["train"][0] == 0 and b["test"][1] == n
        assert b["train"][1] == b["validation"][0] and b["validation"][1] == b["test"][0]
        assert b["train"][1] == n * 9 // 10 and b["validation"][1] == n * 19 // 20
    assert shakespeare_split_bounds(1_115_394) == {
        "train": (0, 1_003_854),
        "validation": (1_003_854, 1_059_624),
        "test": (1_059_624, 1_115_394),
    }
    texts, details = corpus_texts("shakespeare")
    assert "".join(texts[k] for k in ("train", "validation", "test")) == shakespeare_text()
    assert details["splits"]["validation"]["range"] == [1_003_854, 1_059_624]


def test_default_corpus_needs_no_data_dir(monkeypatch, shakespeare_char):
    monkeypatch.delenv("NASHMOE_DATA", raising=False)
    corpus = load_corpus()
    assert corpus.name == "shakespeare" and corpus.info["tokenizer"] == "char"
    assert torch.equal(corpus.train, shakespeare_char.train)


def test_shakespeare_char_corpus(shakespeare_char):
    c = shakespeare_char
    for split in (c.train, c.validation, c.test):
        assert split.dtype == torch.long and split.dim() == 1
    assert (c.train.numel(), c.validation.numel(), c.test.numel()) == (1_003_854, 55_770, 55_770)
    assert isinstance(c.tokenizer, CharTokenizer) and c.vocab_size == 66
    texts, _ = corpus_texts("shakespeare")
    assert c.tokenizer.decode(c.validation) == texts["validation"]
    assert c.info["oov_rate"] == {"train": 0.0, "validation": 0.0, "test": 0.0}
    info = json.loads(json.dumps(c.info))  # JSON-serialisable
    assert info["corpus"] == "shakespeare" and info["vocab_size"] == 66
    assert "90%" in info["split_rule"]
    # the vocabulary comes from the training split: the tokenizer is train's characters
    assert c.tokenizer.chars[:-1] == sorted(set(texts["train"]))


def test_shakespeare_word_corpus():
    c = load_corpus("shakespeare", tokenizer="word", min_freq=3)
    assert isinstance(c.tokenizer, WordTokenizer) and c.info["min_freq"] == 3
    assert c.tokenizer.tokenize("First Citizen:\n") == ["First", "Citizen", ":", "<eos>"]
    texts, _ = corpus_texts("shakespeare")
    assert int((c.validation == c.tokenizer.eos_id).sum()) == texts["validation"].count("\n")
    assert 0.0 < c.info["oov_rate"]["validation"] < 0.2


def test_tokenizer_object_is_used_as_given(shakespeare_char):
    restored = tokenizer_from_dict(json.loads(json.dumps(shakespeare_char.tokenizer.to_dict())))
    c = load_corpus("shakespeare", tokenizer=restored)
    assert c.tokenizer is restored and c.info["tokenizer_given"]
    assert torch.equal(c.test, shakespeare_char.test)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "wikitext"}, r"unknown corpus 'wikitext' \(choose from shakespeare, brown, or"),
        ({"tokenizer": "sentencepiece"}, r"unknown tokenizer 'sentencepiece' \(choose from char"),
        ({"tokenizer": 3}, "tokenizer must be a name"),
        ({"tokenizer": "word", "min_freq": 0}, "min_freq must be a positive integer"),
        ({"tokenizer": "bpe", "bpe_vocab_size": 100}, "bpe_vocab_size must be an integer >= 258"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_corpus(**kwargs)


def test_split_accessor(shakespeare_char):
    assert shakespeare_char.split("validation") is shakespeare_char.validation
    assert shakespeare_char.split("valid") is shakespeare_char.validation  # the old name
    with pytest.warns(DeprecationWarning, match="Corpus.valid"):
        assert shakespeare_char.valid is shakespeare_char.validation
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        shakespeare_char.split("dev")


def test_choices_are_listed():
    assert CORPORA == ("shakespeare", "brown")
    assert TOKENIZERS == ("char", "word", "bpe", "gpt2")


def test_shakespeare_gpt2(need_data):
    pytest.importorskip("tokenizers")
    need_data("gpt2-bpe/vocab.bpe")
    c = load_corpus("shakespeare", tokenizer="gpt2")
    assert c.vocab_size == 50257 and c.info["tokenizer"] == "gpt2"
    texts, _ = corpus_texts("shakespeare")
    assert c.tokenizer.decode(c.test) == texts["test"]
    assert c.tokenizer.encode("First Citizen:") == c.train[:3].tolist() == [5962, 22307, 25]
