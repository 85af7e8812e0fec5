"""Your own data: a text file, a directory of split files, ``datasets:PATH`` (local files), and
tokenizers from a ``tokenizer.json`` or an ``AutoTokenizer`` directory."""

from __future__ import annotations

import json

import pytest
import torch

from nashmoe.cli import main
from nashmoe.data import (
    PretrainedTokenizer,
    corpus_label,
    load_corpus,
    tokenizer_from_dict,
)

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "my corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_a_text_file_is_split_90_5_5(text_file):
    c = load_corpus(str(text_file))
    n = len(TEXT)
    assert (c.train.numel(), c.validation.numel(), c.test.numel()) == (
        n * 9 // 10,
        n * 19 // 20 - n * 9 // 10,
        n - n * 19 // 20,
    )
    assert c.tokenizer.name == "char" and "90% / 5% / 5%" in c.info["split_rule"]
    assert (
        c.tokenizer.decode(c.train) + c.tokenizer.decode(c.validation) + c.tokenizer.decode(c.test)
        == TEXT
    )
    assert corpus_label(str(text_file)) == "my-corpus"


def test_a_directory_of_split_files(tmp_path):
    for name, text in (
        ("train.txt", "abc\n" * 50),
        ("wiki.valid.raw", "abc abc\n"),
        ("test", "abc\n"),
    ):
        (tmp_path / name).write_text(text)
    c = load_corpus(str(tmp_path), tokenizer="word", min_freq=1)
    assert c.validation.numel() == 3  # abc abc <eos>: the validation file, word-tokenised
    assert "wiki.valid.raw" in c.info["split_rule"]
    (tmp_path / "test").unlink()
    with pytest.raises(ValueError, match="no text file for the test split"):
        load_corpus(str(tmp_path))


def test_train_on_your_own_text_file(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--corpus", str(text_file), "--method", "smoe", "--out", str(out),
            "--steps", "2", "--batch-size", "2", "--log-interval", "1", "--tensorboard", "off",
            "--no-progress", "--threads", "1", "--set", "n_layer=1", "--set", "d_model=16",
            "--set", "d_ff=32", "--set", "n_head=2", "--set", "block_size=16"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "validation_ppl" in summary and "valid_ppl" not in summary
    result = json.loads((out / "result.json").read_text())
    assert "validation" in result and result["config"]["corpus"] == str(text_file)
    assert main(["eval", str(out), "--split", "valid,test"]) == 0  # the old name still works
    assert "validation: loss" in capsys.readouterr().out


def test_datasets_local_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    for split, n in (("train", 60), ("validation", 5), ("test", 5)):
        rows = [{"text": f"row {i + 100 * len(split)}", "id": i} for i in range(n)]
        datasets.Dataset.from_list(rows).to_json(str(tmp_path / f"{split}.jsonl"))
    c = load_corpus(f"datasets:{tmp_path}")
    assert c.tokenizer.decode(c.validation).startswith("row 1000\nrow 1001\n")
    assert "the dataset's own splits" in c.info["split_rule"]
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"body": f"row {i}"} for i in range(100)]).save_to_disk(str(saved))
    one = load_corpus(f"datasets:{saved}")  # the only string column; train only: split 90/5/5
    assert one.tokenizer.decode(one.train).startswith("row 0\nrow 1\n")
    assert "train split, contiguous" in one.info["split_rule"]


def test_datasets_corpus_without_the_package(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a, **k: None if n == "datasets" else real(n, *a)
    )
    assert main(["train", "--corpus", f"datasets:{tmp_path}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nashmoe train: error: --corpus datasets:")
    assert "pip install 'nashmoe[data]'" in err


def _tokenizer_json(tmp_path):
    pytest.importorskip("tokenizers")
    from nashmoe.data import train_bpe

    path = tmp_path / "tokenizer.json"
    path.write_text(train_bpe([TEXT], vocab_size=300).backend.to_str(), encoding="utf-8")
    return path


def test_a_tokenizer_json(tmp_path, text_file):
    path = _tokenizer_json(tmp_path)
    c = load_corpus(str(text_file), tokenizer=str(path))
    assert isinstance(c.tokenizer, PretrainedTokenizer) and c.info["tokenizer_path"] == str(path)
    assert c.tokenizer.decode(c.test) == TEXT[len(TEXT) * 19 // 20 :]
    restored = tokenizer_from_dict(json.loads(json.dumps(c.tokenizer.to_dict())))
    assert restored.encode("the lazy dog") == c.tokenizer.encode("the lazy dog")
    assert restored.eos_id == c.tokenizer.eos_id == 0  # <|endoftext|>


def test_an_auto_tokenizer_directory(tmp_path, text_file):
    path = _tokenizer_json(tmp_path)
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>")
    directory = tmp_path / "tok"
    fast.save_pretrained(str(directory))
    c = load_corpus(str(text_file), tokenizer=str(directory))
    assert c.tokenizer.eos_id == fast.eos_token_id
    assert torch.equal(c.test, torch.tensor(fast(TEXT[len(TEXT) * 19 // 20 :])["input_ids"]))
