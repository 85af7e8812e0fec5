"""Deterministic, seeded splits stratified by (group × label) cells.

Used by :mod:`nashmoe.fairness.datasets`: a train / validation / test partition stratified by cell
(fairness.md, section 9: 70/15/15 for COMPAS and German; Adult keeps ``adult.test`` as its test
set), and the meta set, drawn from the training portion with the same number of examples in
every cell (``meta_per_cell``, 3 by default as in the reference code of Zeng et al.).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["balanced_meta_split", "cell_ids", "stratified_partition"]


def cell_ids(group: np.ndarray, label: np.ndarray, n_labels: int = 2) -> np.ndarray:
    """Cell index ``group * n_labels + label`` of each row."""
    return np.asarray(group, dtype=np.int64) * n_labels + np.asarray(label, dtype=np.int64)


def stratified_partition(
    strata: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> list[np.ndarray]:
    """Partition row indices into ``len(fractions)`` parts, stratified by ``strata``.

    Within each stratum (in sorted order) the rows are shuffled by ``rng`` and cut at
    ``round(cumsum(fractions) * n)``; the fractions must sum to 1. Each part is returned sorted.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or len(fr) < 1 or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
    strata = np.asarray(strata)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    for value in np.unique(strata):
        idx = np.flatnonzero(strata == value)
        idx = idx[rng.permutation(len(idx))]
        bounds = np.round(np.cumsum(fr) * len(idx)).astype(np.int64)
        bounds[-1] = len(idx)
        start = 0
        for k, end in enumerate(bounds):
            parts[k].append(idx[start:end])
            start = end
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def balanced_meta_split(
    cells: np.ndarray,
    n_cells: int,
    per_cell: int,
    rng: np.random.Generator,
    *,
    cell_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``per_cell`` rows of every cell without replacement: ``(meta_index, rest_index)``.

    ``cells`` are the cell ids (``0..n_cells-1``) of the candidate rows (positions into
    ``cells``). A cell with fewer rows gives all it has, with a warning naming it.
    """
    if per_cell < 1:
        raise ValueError(f"meta_per_cell must be at least 1, got {per_cell}")
    cells = np.asarray(cells, dtype=np.int64)
    meta = []
    for c in range(n_cells):
        idx = np.flatnonzero(cells == c)
        if len(idx) < per_cell:
            name = cell_names[c] if cell_names is not None else str(c)
            warnings.warn(
                f"cell {name} has {len(idx)} training rows, fewer than meta_per_cell={per_cell}; "
                "the meta set takes all of them",
                stacklevel=2,
            )
        meta.append(idx[rng.permutation(len(idx))[:per_cell]])
    meta_idx = np.sort(np.concatenate(meta)) if meta else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(cells)), meta_idx, assume_unique=True)
    return meta_idx, rest
