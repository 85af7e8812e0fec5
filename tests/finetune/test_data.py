"""Reading GLUE-layout task files: values, subsets, and the errors bad files get."""

from __future__ import annotations

import numpy as np
import pytest

from nashmoe.finetune.data import TASKS, load_task, stratified_indices

from ._shared import require_data


def test_load_task_reads_every_split(task_dir) -> None:
    splits = load_task("sst2", data_dir=task_dir)
    assert set(splits) == {"train", "dev", "test"}
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [16, 8, 8]
    train = splits["train"]
    assert train.labels.dtype == np.int64 and set(train.labels.tolist()) <= {0, 1}
    assert all(s == s.strip() and s for s in train.sentences)
    quoted = [s for k in splits for s in splits[k].sentences if '"' in s]
    assert quoted == ['the "kids" will love it']  # quotes are text, not CSV quoting


def test_subset_keeps_sentences_and_labels_aligned(task_dir) -> None:
    train = load_task("sst2", data_dir=task_dir)["train"]
    idx = np.array([3, 0, 5])
    sub = train.subset(idx)
    assert sub.sentences == [train.sentences[i] for i in idx]
    assert sub.labels.tolist() == train.labels[idx].tolist()


def test_real_sst2_sizes() -> None:
    folder = require_data("sst2/train.tsv").parents[1]
    splits = load_task("sst2", data_dir=folder)
    assert {k: len(v) for k, v in splits.items()} == {"train": 60614, "dev": 6735, "test": 872}
    assert 0.4 < splits["test"].labels.mean() < 0.6


def test_stratified_indices_follow_class_shares() -> None:
    labels = np.array([0] * 30 + [1] * 70)
    idx = stratified_indices(labels, 10, seed=0)
    assert len(idx) == 10 and np.all(np.diff(idx) > 0)
    assert (labels[idx] == 0).sum() == 3 and (labels[idx] == 1).sum() == 7
    assert np.array_equal(idx, stratified_indices(labels, 10, seed=0))  # deterministic
    assert not np.array_equal(idx, stratified_indices(labels, 10, seed=1))
    assert np.array_equal(stratified_indices(labels, 500, seed=0), np.arange(100))


def test_unknown_task_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'cola'.*sst2"):
        load_task("cola", data_dir=".")
    assert "sst2" in TASKS


def test_missing_data_names_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"sst2/train\.tsv"):
        load_task("sst2", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("sst2", data_dir=tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sentence\tlabel\nfine\t1\nbad\tmaybe\n", r"train\.tsv, line 3: label 'maybe'"),
        ("sentence\tlabel\nfine\t1\nbad\t2\n", r"line 3: label 2 outside 0\.\.1"),
        ("text\tlabel\nfine\t1\n", r"no column 'sentence'"),
        ("sentence\tlabel\nonly-one-field\n", r"line 2: 1 field\(s\)"),
        ("", "empty file"),
        ("sentence\tlabel\n", "no rows"),
    ],
)
def test_malformed_file_errors_name_file_and_line(task_dir, text, message) -> None:
    (task_dir / "sst2" / "train.tsv").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_task("sst2", data_dir=task_dir)
