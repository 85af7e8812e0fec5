"""Tabular fairness data sets: UCI Adult, ProPublica COMPAS (two-year), Statlog German credit.

Readers parse the usual public files (``adult.data``/``adult.test``,
``compas-scores-two-years.csv``, ``german.data``) from a data folder given explicitly
(``data_dir``) or by ``$NASHMOE_DATA`` (files under ``fairness/``). :func:`load_fair_dataset`
turns one into a :class:`FairDataset`: a seeded split into train / meta / val / test, stratified
by (sensitive group × label), with the encoder (standardisation, one-hot) fitted on the training
portion only.

Preprocessing (fairness.md, section 9):

- **Adult** (label 1 = ``>50K``, favourable). ``adult.test`` starts with a comment line and its
  labels end with a period; both are handled. ``fnlwgt`` (a census sampling weight) and
  ``education-num`` (a duplicate of ``education``) are dropped; ``?`` is kept as its own category
  (``missing="drop"`` drops those rows). ``adult.data`` gives train / meta / val, ``adult.test``
  the test set. Sensitive: ``sex`` (Male, Female), ``race`` (5 values).
- **COMPAS** (label 1 = ``two_year_recid``, re-offended within two years: the *unfavourable*
  outcome; the "selection rate" is P(ŷ = 1)). The header repeats ``decile_score`` and
  ``priors_count``: names are de-duplicated (``priors_count``, ``priors_count.1``) and the first
  occurrence is used. The standard ProPublica filter (|days_b_screening_arrest| ≤ 30,
  is_recid ≠ −1, c_charge_degree ≠ "O", score_text ≠ "N/A") leaves 6,172 rows. Features:
  sex, age, race, juvenile counts, priors_count, c_charge_degree only. Sensitive: ``race``
  (default African-American vs Caucasian, other rows dropped; ``race_groups="all"`` merges
  groups with a (group × label) cell smaller than ``min_cell_size`` into Other) or ``sex``.
- **German** (label 1 = good credit, recoded from 1 = good / 2 = bad). Sensitive: ``age``
  (age > 25 vs ≤ 25) or ``sex`` (from attribute 9: A92 female; A91, A93, A94 male).
- COMPAS and German: 70 / 15 / 15 train / val / test, stratified by cell; each seed draws its
  own split. In every data set the meta set comes from the training portion with
  ``meta_per_cell`` rows per (group × label) cell; val is disjoint from the meta set.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nashmoe._paths import data_file
from nashmoe.fairness.splits import balanced_meta_split, cell_ids, stratified_partition
from nashmoe.fairness.tabular import RawTable, TabularEncoder

__all__ = [
    "DATASETS",
    "FairDataset",
    "FairSplit",
    "load_fair_dataset",
    "read_adult",
    "read_compas",
    "read_german",
    "sensitive_groups",
]

PathLike = str | os.PathLike[str]

# data set -> sensitive attributes it supports (first = default)
DATASETS: dict[str, tuple[str, ...]] = {
    "adult": ("sex", "race"),
    "compas": ("race", "sex"),
    "german": ("age", "sex"),
}

_ADULT_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
)
_ADULT_NUMERIC = {
    "age",
    "fnlwgt",
    "education-num",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
}
_ADULT_GROUPS = {
    "sex": ("Male", "Female"),
    "race": ("White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"),
}

_COMPAS_NUMERIC = ("age", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count")
_COMPAS_CATEGORICAL = ("sex", "race", "c_charge_degree")

# Statlog German credit attribute names (UCI documentation), in file order.
_GERMAN_COLUMNS = (
    "checking_status",
    "duration",
    "credit_history",
    "purpose",
    "credit_amount",
    "savings",
    "employment",
    "installment_rate",
    "personal_status_sex",
    "other_debtors",
    "residence_since",
    "property",
    "age",
    "other_installment_plans",
    "housing",
    "existing_credits",
    "job",
    "num_dependents",
    "telephone",
    "foreign_worker",
)
_GERMAN_NUMERIC = {
    "duration",
    "credit_amount",
    "installment_rate",
    "residence_since",
    "age",
    "existing_credits",
    "num_dependents",
}
_GERMAN_SEX = {"A91": "male", "A92": "female", "A93": "male", "A94": "male", "A95": "female"}


def _build(
    name: str,
    rows: list[list[str]],
    columns: tuple[str, ...],
    numeric: set[str],
    label: np.ndarray,
    label_description: str,
    drop: tuple[str, ...] = (),
) -> RawTable:
    cols = {c: np.asarray([r[i] for r in rows], dtype=str) for i, c in enumerate(columns)}
    num = {c: cols[c].astype(np.float64) for c in columns if c in numeric and c not in drop}
    cat = {c: cols[c] for c in columns if c not in numeric and c not in drop}
    return RawTable(name, num, cat, label, label_description, attributes=cols)


def _read_adult_file(path: os.PathLike[str], *, test_file: bool) -> list[list[str]]:
    rows: list[list[str]] = []
    with open(path, newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("|"):
                continue  # blank trailing line; adult.test's "|1x3 Cross validator" comment
            fields = [x.strip() for x in line.split(",")]
            if len(fields) != 15:
                raise ValueError(f"{path}:{lineno}: expected 15 fields, got {len(fields)}")
            if test_file:
                fields[14] = fields[14].rstrip(".")
            rows.append(fields)
    return rows


def read_adult(
    data_dir: PathLike | None = None,
    *,
    missing: str = "category",
    drop_columns: tuple[str, ...] = ("fnlwgt", "education-num"),
) -> tuple[RawTable, RawTable]:
    """UCI Adult: ``(adult.data, adult.test)`` as raw tables (label 1 = ``>50K``).

    Args:
        data_dir: folder holding ``fairness/adult.data`` (default: ``$NASHMOE_DATA``).
        missing: ``"category"`` keeps ``?`` as its own category; ``"drop"`` drops those rows.
        drop_columns: columns left out of the features (still available as attributes).
    """
    if missing not in ("category", "drop"):
        raise ValueError(f"missing must be 'category' or 'drop', got {missing!r}")
    unknown = set(drop_columns) - set(_ADULT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown Adult columns in drop_columns: {sorted(unknown)}")
    tables = []
    for fname in ("adult.data", "adult.test"):
        path = data_file(f"fairness/{fname}", data_dir)
        rows = _read_adult_file(path, test_file=fname == "adult.test")
        if missing == "drop":
            rows = [r for r in rows if "?" not in r]
        labels = {r[14] for r in rows}
        if not labels <= {"<=50K", ">50K"}:
            raise ValueError(f"{fname}: unexpected labels {sorted(labels - {'<=50K', '>50K'})}")
        y = np.asarray([r[14] == ">50K" for r in rows], dtype=np.int64)
        tables.append(
            _build(
                "adult",
                [r[:14] for r in rows],
                _ADULT_COLUMNS,
                _ADULT_NUMERIC,
                y,
                ">50K (favourable)",
                drop_columns,
            )
        )
    return tables[0], tables[1]


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        out.append(n if k == 0 else f"{n}.{k}")
        seen[n] = k + 1
    return out


def read_compas(data_dir: PathLike | None = None, *, propublica_filter: bool = True) -> RawTable:
    """ProPublica COMPAS two-year recidivism (label 1 = re-offended: the unfavourable outcome).

    Duplicate header names are de-duplicated (``priors_count``, ``priors_count.1``; likewise
    ``decile_score``) and the features read by name use the first occurrence. With
    ``propublica_filter`` (default) the standard filter leaves 6,172 of 7,214 rows.
    """
    path = data_file("fairness/compas-scores-two-years.csv", data_dir)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = _dedupe(next(reader))
        rows = [r for r in reader if r]
    col = {n: i for i, n in enumerate(header)}
    needed = (*_COMPAS_NUMERIC, *_COMPAS_CATEGORICAL, "two_year_recid")
    missing_cols = [n for n in needed if n not in col]
    if missing_cols:
        raise ValueError(f"{path}: missing columns {missing_cols}")
    if propublica_filter:

        def keep(r: list[str]) -> bool:
            days = r[col["days_b_screening_arrest"]]
            return (
                days != ""
                and abs(float(days)) <= 30
                and r[col["is_recid"]] != "-1"
                and r[col["c_charge_degree"]] != "O"
                and r[col["score_text"]] != "N/A"
            )

        rows = [r for r in rows if keep(r)]
    y = np.asarray([int(r[col["two_year_recid"]]) for r in rows], dtype=np.int64)
    columns = (*_COMPAS_NUMERIC, *_COMPAS_CATEGORICAL)
    picked = [[r[col[c]] for c in columns] for r in rows]
    return _build(
        "compas",
        picked,
        columns,
        set(_COMPAS_NUMERIC),
        y,
        "two_year_recid = 1 (re-offended within two years; unfavourable)",
    )


def read_german(data_dir: PathLike | None = None) -> RawTable:
    """Statlog German credit, 1,000 rows; label recoded to 1 = good credit (favourable)."""
    path = data_file("fairness/german.data", data_dir)
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 21:
                raise ValueError(f"{path}:{lineno}: expected 21 fields, got {len(fields)}")
            rows.append(fields)
    raw_label = np.asarray([r[20] for r in rows])
    if not set(raw_label.tolist()) <= {"1", "2"}:
        raise ValueError(f"{path}: labels must be 1 (good) or 2 (bad)")
    y = (raw_label == "1").astype(np.int64)
    table = _build(
        "german",
        [r[:20] for r in rows],
        _GERMAN_COLUMNS,
        _GERMAN_NUMERIC,
        y,
        "good credit (favourable; recoded from 1 = good, 2 = bad)",
    )
    return table


def sensitive_groups(
    table: RawTable,
    sensitive: str,
    *,
    race_groups: str = "two",
    min_cell_size: int = 20,
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Group ids of the rows for a sensitive attribute: ``(group_id, group_names, keep_mask)``.

    ``keep_mask`` marks the rows that belong to some group (COMPAS race with
    ``race_groups="two"`` keeps African-American and Caucasian rows only).

    Raises:
        ValueError: unknown data set or sensitive attribute (the message lists the valid ones).
    """
    if table.name not in DATASETS:
        raise ValueError(f"unknown data set {table.name!r}; choose from {sorted(DATASETS)}")
    if sensitive not in DATASETS[table.name]:
        raise ValueError(
            f"unknown sensitive attribute {sensitive!r} for {table.name}; "
            f"choose from {list(DATASETS[table.name])}"
        )
    attrs = table.attributes
    if table.name == "adult":
        names = _ADULT_GROUPS[sensitive]
        values = attrs[sensitive]
    elif table.name == "german":
        if sensitive == "age":
            names = ("age>25", "age<=25")
            values = np.where(attrs["age"].astype(np.float64) > 25, names[0], names[1])
        else:
            names = ("male", "female")
            values = np.asarray([_GERMAN_SEX[v] for v in attrs["personal_status_sex"]])
    elif sensitive == "sex":
        names = ("Male", "Female")
        values = attrs["sex"]
    else:
        values = attrs["race"].astype(str)
        if race_groups == "two":
            names = ("Caucasian", "African-American")
        elif race_groups == "all":
            if min_cell_size < 1:
                raise ValueError(f"min_cell_size must be at least 1, got {min_cell_size}")
            order = ("Caucasian", "African-American", "Hispanic", "Asian", "Native American")
            small = []
            for v in order:
                cells = [int(((values == v) & (table.label == lab)).sum()) for lab in (0, 1)]
                if min(cells) < min_cell_size:
                    small.append(v)
            values = np.where(np.isin(values, small), "Other", values)
            names = (*(v for v in order if v not in small), "Other")
        else:
            raise ValueError(f"race_groups must be 'two' or 'all', got {race_groups!r}")
    unexpected = set(np.unique(values).tolist()) - set(names)
    if table.name != "compas" and unexpected:
        raise ValueError(f"{table.name}: unexpected {sensitive} values {sorted(unexpected)}")
    index = {n: i for i, n in enumerate(names)}
    gid = np.asarray([index.get(v, -1) for v in values], dtype=np.int64)
    return gid, names, gid >= 0


@dataclass(frozen=True)
class FairSplit:
    """One split: features ``x`` [N, D] float32, labels ``y`` [N] int64, group ids [N] int64."""

    x: Tensor
    y: Tensor
    group: Tensor

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.y.shape != (n,) or self.group.shape != (n,):
            raise ValueError(
                f"split shapes disagree: x {tuple(self.x.shape)}, y {tuple(self.y.shape)}, "
                f"group {tuple(self.group.shape)}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def cell_counts(self, n_groups: int) -> Tensor:
        """Rows per (group, label): ``[n_groups, 2]``."""
        return torch.bincount(self.group * 2 + self.y, minlength=2 * n_groups).view(n_groups, 2)


@dataclass(frozen=True)
class FairDataset:
    """A tabular fairness data set split for meta-learning.

    Attributes:
        name, sensitive: data set and sensitive attribute.
        group_names: name of each group id.
        feature_names: encoded feature names (numeric first, then ``col=category``).
        label_description: what label 1 means, and whether it is the favourable outcome.
        train: the training rows (meta rows excluded).
        meta: the (group × label)-balanced meta set used for the hypergradients.
        val: validation rows for model selection (disjoint from meta and train).
        test: test rows.
        seed: the seed of the split.
    """

    name: str
    sensitive: str
    group_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    label_description: str
    train: FairSplit
    meta: FairSplit
    val: FairSplit
    test: FairSplit
    seed: int

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def summary(self) -> dict[str, dict[str, list[int]]]:
        """Rows per split, per group, per label: ``{split: {group: [n_label0, n_label1]}}``."""
        out = {}
        for split in ("train", "meta", "val", "test"):
            counts = getattr(self, split).cell_counts(self.n_groups)
            out[split] = {g: counts[i].tolist() for i, g in enumerate(self.group_names)}
        return out


def _tensors(encoder: TabularEncoder, table: RawTable, group: np.ndarray) -> FairSplit:
    return FairSplit(
        x=torch.from_numpy(encoder.transform(table)),
        y=torch.from_numpy(table.label.astype(np.int64)),
        group=torch.from_numpy(group.astype(np.int64)),
    )


def load_fair_dataset(
    dataset: str,
    sensitive: str | None = None,
    *,
    seed: int = 0,
    data_dir: PathLike | None = None,
    meta_per_cell: int = 3,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    missing: str = "category",
    race_groups: str = "two",
    min_cell_size: int = 20,
    include_sensitive: bool = True,
) -> FairDataset:
    """Load, split and encode a fairness data set (see the module docstring for each one).

    Args:
        dataset: ``"adult"``, ``"compas"`` or ``"german"``.
        sensitive: sensitive attribute (default: the first of ``DATASETS[dataset]``).
        seed: seed of the split (and nothing else).
        data_dir: data folder (default ``$NASHMOE_DATA``).
        meta_per_cell: meta examples per (group × label) cell, drawn from the training portion.
        val_fraction: share of the rows for validation (Adult: of ``adult.data``).
        test_fraction: share for test (COMPAS, German; Adult uses ``adult.test``).
        missing: Adult's ``?`` handling, ``"category"`` or ``"drop"``.
        race_groups, min_cell_size: COMPAS race grouping (see :func:`sensitive_groups`).
        include_sensitive: keep the sensitive attribute among the features (the reference does).

    Raises:
        ValueError: unknown data set or attribute, bad fractions, or a group with no example in
            the meta, val or test split (the message names it).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; choose from {sorted(DATASETS)}")
    sensitive = DATASETS[dataset][0] if sensitive is None else sensitive
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 < val_fraction, 0 <= test_fraction and their sum < 1, got "
            f"{val_fraction}, {test_fraction}"
        )
    rng = np.random.default_rng(seed)
    if dataset == "adult":
        pool, test_table = read_adult(data_dir, missing=missing)
    elif dataset == "compas":
        pool, test_table = read_compas(data_dir), None
    else:
        pool, test_table = read_german(data_dir), None
    gid, names, keep = sensitive_groups(
        pool, sensitive, race_groups=race_groups, min_cell_size=min_cell_size
    )
    pool, gid = pool.take(keep), gid[keep]
    if not include_sensitive:
        pool = _without_sensitive(pool, sensitive)
    cells = cell_ids(gid, pool.label)
    if test_table is None:
        fr = [1 - val_fraction - test_fraction, val_fraction, test_fraction]
        train_idx, val_idx, test_idx = stratified_partition(cells, fr, rng)
        test_table, test_gid = pool.take(test_idx), gid[test_idx]
    else:
        train_idx, val_idx = stratified_partition(cells, [1 - val_fraction, val_fraction], rng)
        test_gid, _, tkeep = sensitive_groups(
            test_table, sensitive, race_groups=race_groups, min_cell_size=min_cell_size
        )
        test_table, test_gid = test_table.take(tkeep), test_gid[tkeep]
        if not include_sensitive:
            test_table = _without_sensitive(test_table, sensitive)
    cell_names = [f"({g}, y={y})" for g in names for y in (0, 1)]
    meta_pos, rest_pos = balanced_meta_split(
        cells[train_idx], 2 * len(names), meta_per_cell, rng, cell_names=cell_names
    )
    meta_idx, train_idx = train_idx[meta_pos], train_idx[rest_pos]
    encoder = TabularEncoder.fit(pool.take(np.sort(np.concatenate([train_idx, meta_idx]))))
    out = FairDataset(
        name=dataset,
        sensitive=sensitive,
        group_names=names,
        feature_names=encoder.feature_names,
        label_description=pool.label_description,
        train=_tensors(encoder, pool.take(train_idx), gid[train_idx]),
        meta=_tensors(encoder, pool.take(meta_idx), gid[meta_idx]),
        val=_tensors(encoder, pool.take(val_idx), gid[val_idx]),
        test=_tensors(encoder, test_table, test_gid),
        seed=seed,
    )
    for split in ("meta", "val", "test"):
        counts = getattr(out, split).cell_counts(len(names)).sum(1)
        empty = [names[i] for i in range(len(names)) if int(counts[i]) == 0]
        if empty:
            raise ValueError(
                f"{dataset}/{sensitive}: group(s) {empty} have no example in the {split} split"
            )
    return out


def _without_sensitive(table: RawTable, sensitive: str) -> RawTable:
    column = {
        ("adult", "sex"): "sex",
        ("adult", "race"): "race",
        ("compas", "race"): "race",
        ("compas", "sex"): "sex",
        ("german", "age"): "age",
        ("german", "sex"): "personal_status_sex",
    }[(table.name, sensitive)]
    if column not in table.numeric and column not in table.categorical:
        warnings.warn(f"{column!r} is not a feature of {table.name}", stacklevel=3)
    return RawTable(
        name=table.name,
        numeric={k: v for k, v in table.numeric.items() if k != column},
        categorical={k: v for k, v in table.categorical.items() if k != column},
        label=table.label,
        label_description=table.label_description,
        attributes=table.attributes,
    )
