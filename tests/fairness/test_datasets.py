"""Loaders: the row counts and label rates of fairness.md §9, preprocessing, splits, errors."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nashmoe.fairness.datasets import (
    load_fair_dataset,
    read_adult,
    read_compas,
    read_german,
    sensitive_groups,
)
from nashmoe.fairness.splits import balanced_meta_split, stratified_partition
from nashmoe.fairness.tabular import RawTable, TabularEncoder


def require_data(relative: str) -> Path:
    """Path of a shared data file, or skip (tests/conftest.py points NASHMOE_DATA at it)."""
    root = os.environ.get("NASHMOE_DATA")
    path = Path(root) / relative if root else None
    if path is None or not path.exists():
        pytest.skip(f"data file {relative!r} not found (set NASHMOE_DATA)")
    return path


@pytest.fixture(scope="module")
def adult():
    require_data("fairness/adult.data")
    return read_adult()


def test_adult_counts(adult) -> None:
    train, test = adult
    assert (len(train), len(test)) == (32_561, 16_281)
    assert collections.Counter(train.label.tolist()) == {0: 24_720, 1: 7_841}
    # adult.test: the "|1x3 Cross validator" comment line is skipped, ">50K." loses its period.
    assert set(test.label.tolist()) == {0, 1} and int(test.label.sum()) == 3_846
    missing_rows = lambda t: int(  # noqa: E731
        np.any(np.stack([v == "?" for v in t.categorical.values()]), axis=0).sum()
    )
    assert (missing_rows(train), missing_rows(test)) == (2_399, 1_221)
    assert collections.Counter(train.attributes["sex"].tolist()) == {
        "Male": 21_790,
        "Female": 10_771,
    }
    race = collections.Counter(train.attributes["race"].tolist())
    assert race == {
        "White": 27_816,
        "Black": 3_124,
        "Asian-Pac-Islander": 1_039,
        "Amer-Indian-Eskimo": 311,
        "Other": 271,
    }
    assert "fnlwgt" not in train.numeric and "education-num" not in train.numeric
    assert "?" in set(train.categorical["workclass"].tolist())  # kept as a category


def test_adult_missing_drop() -> None:
    require_data("fairness/adult.data")
    train, test = read_adult(missing="drop")
    assert (len(train), len(test)) == (32_561 - 2_399, 16_281 - 1_221)
    with pytest.raises(ValueError, match="missing"):
        read_adult(missing="impute")


def test_compas_duplicates_and_filter() -> None:
    path = require_data("fairness/compas-scores-two-years.csv")
    header = path.read_text().splitlines()[0].split(",")
    dup = [n for n, c in collections.Counter(header).items() if c > 1]
    assert sorted(dup) == ["decile_score", "priors_count"] and len(header) == 53
    raw = read_compas(propublica_filter=False)
    assert len(raw) == 7_214
    assert raw.label.mean() == pytest.approx(0.451, abs=5e-4)
    t = read_compas()
    assert len(t) == 6_172
    assert set(t.numeric) == {
        "age",
        "juv_fel_count",
        "juv_misd_count",
        "juv_other_count",
        "priors_count",
    }
    assert set(t.categorical) == {"sex", "race", "c_charge_degree"}
    # First occurrence of the duplicated column; equal to the second one in this file.
    assert np.isfinite(t.numeric["priors_count"]).all()
    gid, names, _ = sensitive_groups(t, "race")
    assert names == ("Caucasian", "African-American")
    assert (int((gid == 0).sum()), int((gid == 1).sum())) == (2_103, 3_175)
    _, names_all, keep_all = sensitive_groups(t, "race", race_groups="all", min_cell_size=20)
    assert names_all == ("Caucasian", "African-American", "Hispanic", "Other") and keep_all.all()


def test_german_label_recoding_and_attributes() -> None:
    require_data("fairness/german.data")
    t = read_german()
    assert len(t) == 1_000 and int(t.label.sum()) == 700  # 1 = good (favourable)
    gid, names, _ = sensitive_groups(t, "age")
    assert names == ("age>25", "age<=25") and int((gid == 0).sum()) == 810
    gid, names, _ = sensitive_groups(t, "sex")
    assert names == ("male", "female") and int((gid == 1).sum()) == 310


@pytest.mark.parametrize(
    ("dataset", "sensitive", "n_groups"),
    [("adult", "race", 5), ("compas", "race", 2), ("german", "age", 2), ("german", "sex", 2)],
)
def test_splits_shapes_balance_and_determinism(dataset, sensitive, n_groups) -> None:
    require_data("fairness/adult.data")
    ds = load_fair_dataset(dataset, sensitive, seed=3)
    assert ds.n_groups == n_groups
    for split in (ds.train, ds.meta, ds.val, ds.test):
        assert split.x.shape == (len(split), ds.n_features) and split.x.dtype == torch.float32
        assert torch.isfinite(split.x).all()
    # The meta set is balanced over (group × label): 3 per cell by default.
    assert torch.equal(ds.meta.cell_counts(n_groups), torch.full((n_groups, 2), 3))
    if dataset != "adult":
        total = len(ds.train) + len(ds.meta) + len(ds.val) + len(ds.test)
        assert len(ds.val) / total == pytest.approx(0.15, abs=0.01)
        assert len(ds.test) / total == pytest.approx(0.15, abs=0.01)
    else:
        assert len(ds.test) == 16_281
    # Deterministic per seed, different across seeds.
    again = load_fair_dataset(dataset, sensitive, seed=3)
    assert torch.equal(again.meta.x, ds.meta.x) and torch.equal(again.val.y, ds.val.y)
    other = load_fair_dataset(dataset, sensitive, seed=4)
    assert not torch.equal(other.meta.x, ds.meta.x)


def test_preprocessing_is_fitted_on_the_training_portion_only() -> None:
    require_data("fairness/german.data")
    ds = load_fair_dataset("german", "age", seed=0)
    fit_rows = torch.cat([ds.train.x, ds.meta.x])
    numeric = [i for i, n in enumerate(ds.feature_names) if "=" not in n]
    assert len(numeric) == 7
    assert torch.allclose(
        fit_rows[:, numeric].double().mean(0), torch.zeros(7, dtype=torch.float64), atol=1e-5
    )
    assert not torch.allclose(ds.test.x[:, numeric].mean(0), torch.zeros(7), atol=1e-3)
    onehot = [i for i, n in enumerate(ds.feature_names) if "=" in n]
    assert set(torch.unique(ds.test.x[:, onehot]).tolist()) <= {0.0, 1.0}
    no_sens = load_fair_dataset("german", "age", seed=0, include_sensitive=False)
    assert "age" not in no_sens.feature_names and no_sens.n_features == ds.n_features - 1


def test_encoder_unseen_category_is_all_zeros() -> None:
    tab = RawTable(
        "t",
        {"a": np.array([1.0, 3.0])},
        {"c": np.array(["x", "y"])},
        np.array([0, 1]),
        "",
        {},
    )
    enc = TabularEncoder.fit(tab)
    assert enc.feature_names == ("a", "c=x", "c=y")
    new = RawTable("t", {"a": np.array([2.0])}, {"c": np.array(["z"])}, np.array([0]), "", {})
    np.testing.assert_allclose(enc.transform(new), [[0.0, 0.0, 0.0]])


def test_split_helpers() -> None:
    rng = np.random.default_rng(0)
    strata = np.repeat([0, 1, 2], [10, 20, 30])
    parts = stratified_partition(strata, [0.7, 0.15, 0.15], rng)
    assert sorted(np.concatenate(parts).tolist()) == list(range(60))
    assert [int((strata[parts[0]] == s).sum()) for s in range(3)] == [7, 14, 21]
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_partition(strata, [0.5, 0.2], rng)
    with pytest.warns(UserWarning, match=r"cell \(b, y=1\) has 1 training rows"):
        meta, rest = balanced_meta_split(
            np.array([0, 0, 0, 1, 1, 2, 2, 3]), 4, 2, rng, cell_names=["a0", "a1", "b0", "(b, y=1)"]
        )
    assert len(meta) == 2 + 2 + 2 + 1 and len(np.intersect1d(meta, rest)) == 0


def test_bad_inputs_give_clear_errors(tmp_path) -> None:
    require_data("fairness/adult.data")
    with pytest.raises(
        ValueError,
        match=r"unknown sensitive attribute 'age' for adult; choose from \['sex', 'race'\]",
    ):
        load_fair_dataset("adult", "age")
    with pytest.raises(ValueError, match="unknown data set 'bank'"):
        load_fair_dataset("bank")
    with pytest.raises(ValueError, match="val_fraction"):
        load_fair_dataset("german", val_fraction=0.0)
    with pytest.raises(FileNotFoundError, match=r"german\.data"):
        load_fair_dataset("german", data_dir=tmp_path)
    # A group that cannot reach the meta set is named in the error.
    with (
        pytest.raises(ValueError, match=r"no example in the meta split"),
        pytest.warns(UserWarning),
    ):
        load_fair_dataset("german", "age", meta_per_cell=3, val_fraction=0.15, test_fraction=0.849)
