"""Loaders: counts and accuracies quoted in defer.md section 9, alignment, splits."""

from __future__ import annotations

import numpy as np
import pytest

from nashmoe.defer.data import (
    CIFAR10N_EXPERT_KEYS,
    default_cache_dir,
    load_cifar10,
    load_cifar10n_labels,
    load_hatespeech,
    stratified_split,
)
from nashmoe.defer.experts import sample_vote_annotators
from nashmoe.defer.metrics import expert_summary

from ._shared import require_data


def test_cifar10n_aligned_and_quoted_accuracies() -> None:
    train_file = require_data("cifar10/train.npz")
    require_data("cifar10n_labels.npz")
    labels = load_cifar10n_labels()
    with np.load(train_file) as npz:
        y = npz["y"].astype(np.int64)
    assert all(len(v) == 50_000 for v in labels.values())
    assert np.bincount(y).tolist() == [5000] * 10
    np.testing.assert_array_equal(labels["clean_label"], y)  # aligned with the train order
    clean = labels["clean_label"]
    acc = {k: (labels[k] == clean).mean() for k in labels}
    assert acc["random_label1"] == pytest.approx(0.8277, abs=5e-5)
    assert acc["random_label2"] == pytest.approx(0.8188, abs=5e-5)
    assert acc["random_label3"] == pytest.approx(0.8236, abs=5e-5)
    assert acc["aggre_label"] == pytest.approx(0.9099, abs=5e-5)
    assert acc["worse_label"] == pytest.approx(0.5979, abs=5e-5)
    experts = np.stack([labels[k] for k in CIFAR10N_EXPERT_KEYS], axis=1)
    s = expert_summary(clean, experts)
    assert s["union_coverage"] == pytest.approx(0.9787, abs=5e-5)
    assert s["all_correct"] == pytest.approx(0.5979, abs=5e-5)
    assert s["none_correct"] == pytest.approx(0.0213, abs=5e-5)
    assert s["sum_acc"] == pytest.approx(2.47, abs=5e-3)
    three_different = (
        (experts[:, 0] != experts[:, 1])
        & (experts[:, 0] != experts[:, 2])
        & (experts[:, 1] != experts[:, 2])
    )
    assert int(three_different.sum()) == 3041
    per_class = [(experts[clean == c] == c).mean() for c in range(10)]
    assert int(np.argmin(per_class)) == 3 and per_class[3] == pytest.approx(0.74, abs=0.01)  # cat
    assert int(np.argmax(per_class)) == 7 and per_class[7] == pytest.approx(0.89, abs=0.01)  # horse


def test_cifar10_decode_slice_and_test_order() -> None:
    pytest.importorskip("PIL")
    require_data("cifar10/train.npz")
    test_file = require_data("cifar10/test.npz")
    part = load_cifar10("train", limit=40)
    assert part.images.shape == (40, 32, 32, 3) and part.images.dtype == np.uint8
    assert part.classes[0] == "airplane" and part.classes[-1] == "truck"
    assert 30 < part.images.mean() < 220  # real pictures, not zeros
    with np.load(test_file) as npz:
        y_test = npz["y"].astype(np.int64)
    assert len(y_test) == 10_000 and np.bincount(y_test).tolist() == [1000] * 10
    assert (np.diff(y_test) >= 0).all()  # sorted by class: shuffle before splitting
    with pytest.raises(ValueError, match="split"):
        load_cifar10("validation")


def test_cifar10_cache_roundtrip(tmp_path, monkeypatch) -> None:
    pytest.importorskip("PIL")
    require_data("cifar10/train.npz")
    monkeypatch.setenv("NASHMOE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    assert len(load_cifar10("train", limit=8).labels) == 8
    assert not list(tmp_path.iterdir())  # slices are never cached


def test_missing_data_dir_message(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cifar10n_labels\.npz"):
        load_cifar10n_labels(data_dir=tmp_path)


def test_hatespeech_counts_and_annotator_accuracy() -> None:
    require_data("hatespeech/labeled_data.csv")
    data = load_hatespeech()
    assert len(data.tweets) == 24_783
    assert np.bincount(data.labels).tolist() == [1430, 19190, 4163]
    counts = data.votes.sum(1)
    assert int((counts == 3).sum()) == 22_807 and counts.max() == 9
    assert (data.votes.argmax(1) == data.labels).all()  # majority, no ties
    probs = data.vote_probs
    expected = probs[np.arange(len(probs)), data.labels]
    assert expected.mean() == pytest.approx(0.905, abs=5e-4)
    per_class = [expected[data.labels == c].mean() for c in range(3)]
    assert per_class == pytest.approx([0.728, 0.919, 0.899], abs=5e-4)
    assert (probs.max(1) == 1).mean() == pytest.approx(0.705, abs=5e-4)
    preds = sample_vote_annotators(probs, 2, seed=0)
    assert (preds == data.labels[:, None]).mean() == pytest.approx(0.905, abs=0.006)
    assert any("\n" in t for t in data.tweets) or any('"' in t for t in data.tweets)


def test_stratified_split() -> None:
    labels = np.repeat(np.arange(4), [100, 200, 300, 400])
    tr, va, te = stratified_split(labels, (700, 100, 200), seed=3)
    assert (len(tr), len(va), len(te)) == (700, 100, 200)
    assert len(np.unique(np.concatenate([tr, va, te]))) == 1000
    assert np.bincount(labels[va], minlength=4).tolist() == [10, 20, 30, 40]
    again = stratified_split(labels, (700, 100, 200), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    assert not np.array_equal(tr, stratified_split(labels, (700, 100, 200), seed=4)[0])
    fr = stratified_split(labels, (0.7, 0.1, 0.2), seed=0)
    assert [len(p) for p in fr] == [700, 100, 200]
    odd = stratified_split(np.arange(7) % 3, (3, 2), seed=0)
    assert [len(p) for p in odd] == [3, 2]
    with pytest.raises(ValueError, match="exceed"):
        stratified_split(labels, (900, 200))
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(labels, (0.8, 0.3))
