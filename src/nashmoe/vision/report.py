"""Summaries of the image experiment: mean ± sample std over seeds, corruption error relative to a
baseline, paired differences between methods, the table and the accuracy-vs-severity plot.

Corruption error (Hendrycks & Dietterich 2019): for a model f and corruption c,
``CE_c = Σ_s E_{s,c}(f) / Σ_s E_{s,c}(baseline)`` over the severities s, with E the top-1 error;
``mCE`` is the mean of CE_c over corruptions. The paper's baseline is AlexNet; here it is the
``dense`` ViT of the same run (its errors averaged over its seeds), so mCE < 1 means more robust
than the dense model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nashmoe._stats import mean_std
from nashmoe.moe import METHODS
from nashmoe.palette import colors

__all__ = [
    "METHOD_COLORS",
    "add_corruption_errors",
    "format_table",
    "mean_std",
    "plot_severity",
    "summarize",
]

METHOD_COLORS: dict[str, str] = colors(METHODS)
"""A fixed colour per method, the same as in every other figure (:mod:`nashmoe.palette`)."""

SCALARS = ("clean_accuracy", "mean_corruption_accuracy", "accuracy_drop", "mCE")


def add_corruption_errors(runs: list[dict[str, Any]], baseline: str = "dense") -> bool:
    """Add ``corruption_error`` ({name: CE}) and ``mCE`` to every run, relative to the baseline
    method's error averaged over its seeds; False (nothing added) when the baseline did not run."""
    base_runs = [r for r in runs if r["method"] == baseline and r.get("corruption_accuracy")]
    if not base_runs:
        return False
    names = list(base_runs[0]["corruption_accuracy"])
    base_err = {
        c: np.mean([1 - np.asarray(r["corruption_accuracy"][c]) for r in base_runs], axis=0).sum()
        for c in names
    }
    for run in runs:
        ce = {}
        for c in names:
            err = (1 - np.asarray(run["corruption_accuracy"][c])).sum()
            ce[c] = float(err / base_err[c]) if base_err[c] > 0 else math.nan
        run["corruption_error"] = ce
        run["mCE"] = float(np.mean(list(ce.values())))
        run["ce_baseline"] = baseline
    return True


def summarize(
    runs: list[dict[str, Any]],
    *,
    baseline: str = "dense",
    references: Sequence[str] = ("smoe", "camex"),
) -> dict[str, Any]:
    """Per-method summaries over seeds and paired differences (method − reference, same seed)."""
    for run in runs:
        mca = run.get("mean_corruption_accuracy")
        run["accuracy_drop"] = None if mca is None else run["clean_accuracy"] - mca
    has_ce = add_corruption_errors(runs, baseline)
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    per_method: dict[str, Any] = {}
    for m in methods:
        rows = sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"])
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rows]}
        for key in SCALARS:
            if key == "mCE" and not has_ce:
                continue
            entry[key] = mean_std([r.get(key) for r in rows])
        sev = [r["severity_accuracy"] for r in rows if r.get("severity_accuracy")]
        if sev:
            arr = np.asarray(sev)
            entry["severity_accuracy"] = {
                "mean": arr.mean(0).tolist(),
                "std": arr.std(0, ddof=1).tolist() if len(arr) > 1 else None,
            }
        names = list(rows[0].get("corruption_accuracy") or {})
        entry["corruption_accuracy"] = {
            c: np.mean([r["corruption_accuracy"][c] for r in rows], axis=0).tolist() for c in names
        }
        if has_ce:
            entry["corruption_error"] = {
                c: float(np.mean([r["corruption_error"][c] for r in rows])) for c in names
            }
        per_method[m] = entry
    paired: dict[str, Any] = {}
    for ref in references:
        if ref not in per_method:
            continue
        ref_runs = {r["seed"]: r for r in runs if r["method"] == ref}
        for m in methods:
            if m == ref:
                continue
            mine = {r["seed"]: r for r in runs if r["method"] == m}
            seeds = sorted(set(mine) & set(ref_runs))
            if not seeds:
                continue
            diffs: dict[str, Any] = {"seeds": seeds}
            for key in SCALARS:
                if key == "mCE" and not has_ce:
                    continue
                pairs = [(mine[s].get(key), ref_runs[s].get(key)) for s in seeds]
                diffs[key] = mean_std([a - b for a, b in pairs if a is not None and b is not None])
            paired[f"{m} - {ref}"] = diffs
    severities = next((r["severities"] for r in runs if r.get("severities")), None)
    return {
        "severities": severities,
        "methods": per_method,
        "paired_differences": paired,
        "ce_baseline": baseline if has_ce else None,
        "std": "sample standard deviation over seeds (ddof=1); null with one seed",
    }


def _pm(stat: dict[str, Any] | None, scale: float = 100.0, digits: int = 2) -> str:
    if not stat or stat["mean"] is None:
        return "—"
    text = f"{scale * stat['mean']:.{digits}f}"
    if stat["std"] is not None:
        text += f" ± {scale * stat['std']:.{digits}f}"
    return text


def format_table(summary: dict[str, Any]) -> str:
    """A Markdown table: clean accuracy, mean corruption accuracy, drop and mCE per method, then
    the paired differences."""
    head = "| method | seeds | clean acc (%) | corruption acc (%) | drop (points) | mCE (%) |"
    lines = [head, "|---|---|---|---|---|---|"]
    for m, e in summary["methods"].items():
        lines.append(
            f"| {m} | {len(e['seeds'])} | {_pm(e['clean_accuracy'])} | "
            f"{_pm(e['mean_corruption_accuracy'])} | {_pm(e['accuracy_drop'])} | "
            f"{_pm(e.get('mCE'), digits=1)} |"
        )
    if summary["paired_differences"]:
        lines += [
            "",
            "| paired difference (same seeds) | n | Δ clean (points) | Δ corruption (points) "
            "| Δ mCE (points) |",
            "|---|---|---|---|---|",
        ]
        for name, d in summary["paired_differences"].items():
            lines.append(
                f"| {name} | {len(d['seeds'])} | {_pm(d['clean_accuracy'])} | "
                f"{_pm(d['mean_corruption_accuracy'])} | {_pm(d.get('mCE'), digits=1)} |"
            )
    return "\n".join(lines)


def plot_severity(summary: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Accuracy against severity (0 = clean; 1-5 = mean over corruptions), one line per method
    in its fixed colour, error bars = std over seeds."""
    from nashmoe._optional import pyplot

    plt = pyplot("the accuracy-vs-severity plot")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, e in summary["methods"].items():
        sev = e.get("severity_accuracy")
        if not sev:
            continue
        xs = [0, *(summary.get("severities") or range(1, len(sev["mean"]) + 1))]
        y = [e["clean_accuracy"]["mean"], *sev["mean"]]
        err = None
        if sev["std"] is not None and e["clean_accuracy"]["std"] is not None:
            err = [100 * v for v in (e["clean_accuracy"]["std"], *sev["std"])]
        ax.errorbar(
            xs,
            [100 * v for v in y],
            yerr=err,
            marker="o",
            ms=3.5,
            lw=1.4,
            capsize=2.5,
            color=METHOD_COLORS.get(m),
            label=m,
        )
    ax.set_xlabel("severity (0 = clean test set)")
    ax.set_ylabel("accuracy (%), mean over corruptions")
    ax.set_title("CIFAR-10 → CIFAR-10-C-style corruptions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
