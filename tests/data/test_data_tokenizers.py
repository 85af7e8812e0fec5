"""Tokenizers: round trips, unknown symbols, the JSON state, GPT-2's known ids."""

from __future__ import annotations

import json

import pytest

from nashmoe.data import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    shakespeare_text,
    tokenizer_from_dict,
    train_bpe,
)


def _json_round_trip(tok):
    return tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))


# ---------------------------------------------------------------- character
def test_char_round_trip_and_unknown():
    tok = CharTokenizer.train("hello world\n")
    assert isinstance(tok, Tokenizer)
    assert tok.chars == ["\n", " ", "d", "e", "h", "l", "o", "r", "w", "\ufffd"]
    assert tok.vocab_size == 10 and tok.unk_id == 9 and tok.eos_id is None
    assert tok.encode("hello") == [4, 3, 5, 5, 6]
    assert tok.decode(tok.encode("world hello\n")) == "world hello\n"
    assert tok.encode("hex") == [4, 3, tok.unk_id]
    assert tok.decode(tok.encode("hex")) == "he\ufffd"
    back = _json_round_trip(tok)
    assert isinstance(back, CharTokenizer) and back.chars == tok.chars


def test_char_tokenizer_bad_input():
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="duplicates"):
        CharTokenizer(["a", "a"])
    tok = CharTokenizer.train("ab")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])


def test_char_round_trip_on_shakespeare():
    text = shakespeare_text()[:20_000]
    tok = CharTokenizer.train(text)
    assert tok.decode(tok.encode(text)) == text


# ---------------------------------------------------------------- word
def test_word_vocabulary_cutoff_and_order():
    text = "b a b c\na b\nd\n"
    tok = WordTokenizer.build(text, min_freq=2)
    # counts a=2, b=3, c=1, d=1: kept b, a (by count, ties alphabetical); specials first
    assert tok.words == ["<unk>", "<eos>", "b", "a"]
    assert tok.encode("a b c\n") == [3, 2, 0, 1]
    assert tok.tokenize("a b c\n") == ["a", "b", "c", "<eos>"]
    tok1 = WordTokenizer.build(text, min_freq=1)
    assert tok1.words == ["<unk>", "<eos>", "b", "a", "c", "d"]


def test_word_round_trip_and_eos():
    text = "the cat sat\n\nthe dog\nsat"
    tok = WordTokenizer.build(text)
    ids = tok.encode(text)
    assert ids.count(tok.eos_id) == text.count("\n")
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode("the cat\n")) == "the cat\n"
    assert tok.decode(tok.encode("  the   cat  ")) == "the cat"  # normal form
    assert tok.decode(tok.encode("the zebra")) == "the <unk>"
    back = _json_round_trip(tok)
    assert isinstance(back, WordTokenizer) and back.words == tok.words
    assert back.encode(text) == ids


def test_word_lowercase_and_pattern():
    tok = WordTokenizer.build(
        "Hello, world! Don't.\n", lowercase=True, pattern=r"\w+(?:'\w+)*|[^\w\s]"
    )
    assert tok.tokenize("HELLO, World!") == ["hello", ",", "world", "!"]
    assert tok.tokenize("Don't stop") == ["don't", "stop"]
    back = _json_round_trip(tok)
    assert back.lowercase and back.pattern == tok.pattern
    assert back.encode("HELLO, World!") == tok.encode("hello , world !")


def test_word_tokenizer_bad_input():
    with pytest.raises(ValueError, match="min_freq"):
        WordTokenizer.build("a b", min_freq=0)
    with pytest.raises(ValueError, match="special token"):
        WordTokenizer(["<eos>"])
    with pytest.raises(ValueError, match="without spaces"):
        WordTokenizer(["a b"])
    with pytest.raises(ValueError, match="out of range"):
        WordTokenizer(["a"]).decode([3])


# ---------------------------------------------------------------- byte-level BPE
def test_bpe_round_trip_and_state():
    pytest.importorskip("tokenizers")
    text = shakespeare_text()[:50_000]
    tok = train_bpe([text], vocab_size=300)
    assert isinstance(tok, Tokenizer) and tok.name == "bpe"
    assert tok.vocab_size == 300 and tok.eos_id == 0 and tok.unk_id is None
    ids = tok.encode(text[:5000])
    assert len(ids) < 5000  # merges were learned
    assert max(ids) < tok.vocab_size
    assert tok.decode(ids) == text[:5000]
    odd = "naïve café — 日本語 😀\n\ttabs  and  spaces<|endoftext|>"
    assert tok.decode(tok.encode(odd)) == odd  # byte level: anything round-trips
    back = _json_round_trip(tok)
    assert isinstance(back, BPETokenizer) and back.name == "bpe"
    assert back.encode(odd) == tok.encode(odd) and back.vocab_size == 300


def test_bpe_vocab_size_validated():
    pytest.importorskip("tokenizers")
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], vocab_size=100)


def test_bpe_training_is_deterministic():
    pytest.importorskip("tokenizers")
    text = shakespeare_text()[:30_000]
    a = train_bpe([text], vocab_size=320).to_dict()
    b = train_bpe([text], vocab_size=320).to_dict()
    assert a == b


# ---------------------------------------------------------------- GPT-2
def test_gpt2_known_ids(gpt2_tokenizer):
    tok = gpt2_tokenizer
    assert tok.name == "gpt2" and tok.vocab_size == 50257 and tok.eos_id == 50256
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("Hello, my dog is cute") == [15496, 11, 616, 3290, 318, 13779]
    assert tok.encode(" Hello") == [18435]
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.decode([15496, 995]) == "Hello world"


def test_gpt2_round_trip_and_state(gpt2_tokenizer):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n  é😀"
    ids = gpt2_tokenizer.encode(text)
    assert gpt2_tokenizer.decode(ids) == text
    back = _json_round_trip(gpt2_tokenizer)
    assert back.name == "gpt2" and back.vocab_size == 50257
    assert back.encode(text) == ids


def test_gpt2_missing_files_name_the_path(tmp_path):
    pytest.importorskip("tokenizers")
    from nashmoe.data import load_gpt2_tokenizer

    with pytest.raises(FileNotFoundError) as err:
        load_gpt2_tokenizer(tmp_path)
    msg = str(err.value)
    assert "gpt2-bpe/encoder.json" in msg and str(tmp_path / "gpt2-bpe" / "encoder.json") in msg


# ---------------------------------------------------------------- state dispatch
def test_tokenizer_from_dict_rejects_unknown_state():
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        tokenizer_from_dict({"type": "sentencepiece"})
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        tokenizer_from_dict({})
    with pytest.raises(ValueError, match="character tokenizer state"):
        CharTokenizer.from_dict({"type": "char"})
