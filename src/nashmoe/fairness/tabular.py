"""Raw tabular data and a preprocessing encoder fitted on the training split only.

The reference code of Zeng et al. (NeurIPS 2024, arXiv 2406.07029) one-hot encodes every
categorical column and fits a ``StandardScaler`` on all rows (a small test-set leak); here every
statistic (means, standard deviations, the category lists) comes from the training rows only
(fairness.md, section 8). Categories that appear only outside the training rows encode as all
zeros. numpy only: no pandas, no scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RawTable", "TabularEncoder"]


@dataclass(frozen=True)
class RawTable:
    """Columns of a tabular data set before encoding.

    Attributes:
        name: data set name (``"adult"``, ``"compas"``, ``"german"``).
        numeric: numeric feature columns (float64, [N] each), in column order.
        categorical: categorical feature columns (``str`` arrays, [N] each), in column order.
        label: binary label (int64 0/1, [N]).
        label_description: what label 1 means (e.g. ``">50K (favourable)"``).
        attributes: raw columns usable as sensitive attributes (``str`` or float arrays, [N]).
    """

    name: str
    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    label: np.ndarray
    label_description: str
    attributes: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        n = len(self.label)
        for kind, cols in (("numeric", self.numeric), ("categorical", self.categorical)):
            for k, v in cols.items():
                if len(v) != n:
                    raise ValueError(f"{kind} column {k!r} has {len(v)} rows, label has {n}")
        for k, v in self.attributes.items():
            if len(v) != n:
                raise ValueError(f"attribute {k!r} has {len(v)} rows, label has {n}")

    def __len__(self) -> int:
        return len(self.label)

    def take(self, index: np.ndarray) -> RawTable:
        """Rows ``index`` (an integer or boolean array)."""
        return RawTable(
            name=self.name,
            numeric={k: v[index] for k, v in self.numeric.items()},
            categorical={k: v[index] for k, v in self.categorical.items()},
            label=self.label[index],
            label_description=self.label_description,
            attributes={k: v[index] for k, v in self.attributes.items()},
        )

    @staticmethod
    def concat(tables: list[RawTable]) -> RawTable:
        """Row-wise concatenation of tables with the same columns."""
        first = tables[0]
        for t in tables[1:]:
            if list(t.numeric) != list(first.numeric) or list(t.categorical) != list(
                first.categorical
            ):
                raise ValueError("cannot concatenate tables with different columns")
        return RawTable(
            name=first.name,
            numeric={k: np.concatenate([t.numeric[k] for t in tables]) for k in first.numeric},
            categorical={
                k: np.concatenate([t.categorical[k] for t in tables]) for k in first.categorical
            },
            label=np.concatenate([t.label for t in tables]),
            label_description=first.label_description,
            attributes={
                k: np.concatenate([t.attributes[k] for t in tables]) for k in first.attributes
            },
        )


@dataclass(frozen=True)
class TabularEncoder:
    """Standardise numeric columns and one-hot encode categorical ones, with statistics fitted on
    training rows (:meth:`fit`). Output columns: numeric first (in table order), then one
    indicator per (categorical column, category) with categories sorted; names
    ``"col"`` and ``"col=category"``."""

    numeric_names: tuple[str, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    categories: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def fit(cls, table: RawTable) -> TabularEncoder:
        """Fit on ``table`` (the training rows only)."""
        if len(table) == 0:
            raise ValueError("cannot fit the encoder on an empty table")
        means, stds = [], []
        for k, v in table.numeric.items():
            v = v.astype(np.float64)
            if not np.isfinite(v).all():
                raise ValueError(f"numeric column {k!r} has missing or non-finite values")
            means.append(float(v.mean()))
            sd = float(v.std())
            stds.append(sd if sd > 0 else 1.0)
        cats = tuple((k, tuple(sorted({str(x) for x in v}))) for k, v in table.categorical.items())
        return cls(tuple(table.numeric), tuple(means), tuple(stds), cats)

    @property
    def feature_names(self) -> tuple[str, ...]:
        names = list(self.numeric_names)
        for col, values in self.categories:
            names.extend(f"{col}={c}" for c in values)
        return tuple(names)

    def transform(self, table: RawTable) -> np.ndarray:
        """Encoded features ``[N, D]`` (float32)."""
        if tuple(table.numeric) != self.numeric_names or tuple(table.categorical) != tuple(
            c for c, _ in self.categories
        ):
            raise ValueError("table columns differ from the ones the encoder was fitted on")
        parts = []
        for k, m, s in zip(self.numeric_names, self.means, self.stds):
            parts.append(((table.numeric[k].astype(np.float64) - m) / s)[:, None])
        for col, values in self.categories:
            col_values = table.categorical[col].astype(str)
            parts.append(col_values[:, None] == np.asarray(values, dtype=str)[None, :])
        if not parts:
            raise ValueError("the table has no feature columns")
        return np.concatenate([p.astype(np.float32) for p in parts], axis=1)
