"""Small statistics shared by the experiment reports: mean ± sample std over seeds and the
paired-difference summary with its 95 % t-interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["mean_std", "paired_by_seed", "paired_summary", "t_quantile_975"]


# Two-sided 95 % quantiles of Student's t (df = 1..30); beyond, a 1/df expansion (error < 0.002).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (95 % two-sided)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    return 1.959964 + 2.372 / df + 2.8 / df**2


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "std" (sample, ddof=1; None for one value), "n", "values"}``; None values are
    left out."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not len(arr):
        return {"mean": None, "std": None, "n": 0, "values": []}
    with np.errstate(invalid="ignore", over="ignore"):  # nan / inf values: a nan / inf result
        std = float(arr.std(ddof=1)) if len(arr) > 1 else None
        mean = float(arr.mean())
    return {"mean": mean, "std": std, "n": len(arr), "values": arr.tolist()}


def paired_summary(diffs: Sequence[float]) -> dict[str, Any]:
    """Per-seed differences summarised: ``mean``, sample ``std``, ``ci95`` (Student's t) and
    ``status``: ``"higher"`` / ``"lower"`` (the interval excludes 0), ``"within noise"``,
    ``"too few seeds"`` (one difference: no interval), or ``"undefined"`` (a non-finite
    difference: a non-finite mean or std, no interval)."""
    stats = mean_std(diffs)
    out: dict[str, Any] = {
        "mean": stats["mean"],
        "std": stats["std"],
        "ci95": None,
        "status": "too few seeds",
    }
    finite = [v for v in (stats["mean"], stats["std"]) if v is not None]
    if not all(math.isfinite(v) for v in finite):
        out["status"] = "undefined"
    elif stats["std"] is not None:
        half = t_quantile_975(len(diffs) - 1) * stats["std"] / math.sqrt(len(diffs))
        lo, hi = stats["mean"] - half, stats["mean"] + half
        out["ci95"] = [lo, hi]
        out["status"] = "within noise" if lo <= 0 <= hi else ("lower" if hi < 0 else "higher")
    return out


def paired_by_seed(values: dict[int, float], reference: dict[int, float]) -> dict[str, Any] | None:
    """``values − reference`` on the seeds both have: ``seeds``, per-seed ``diffs`` and
    :func:`paired_summary` of them; None when no seed is shared."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    diffs = [values[s] - reference[s] for s in seeds]
    return {"seeds": seeds, "diffs": diffs, **paired_summary(diffs)}
