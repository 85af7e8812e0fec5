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

from nashmoe._stats import mean_std, paired_summary
from nashmoe.moe import METHODS
from nashmoe.palette import colors
from nashmoe.vision.corruptions import CORRUPTION_FAMILIES

__all__ = [
    "METHOD_COLORS",
    "MOMENTUM_PAIRS",
    "add_corruption_errors",
    "family_accuracy",
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


MOMENTUM_PAIRS: tuple[tuple[str, str], ...] = (
    ("namex-full-mom", "namex-full"),
    ("namex-mom", "namex"),
)
"""Pairs that isolate complex momentum (the same method with and without it), compared besides
the references."""


def family_accuracy(corruption_accuracy: dict[str, Sequence[float]]) -> dict[str, float]:
    """Mean accuracy of each corruption family (:data:`CORRUPTION_FAMILIES`) over its
    corruptions present in ``corruption_accuracy`` and all their severities."""
    out = {}
    for family, names in CORRUPTION_FAMILIES.items():
        values = [a for n in names if n in corruption_accuracy for a in corruption_accuracy[n]]
        if values:
            out[family] = float(np.mean(values))
    return out


def _paired(diffs: Sequence[float]) -> dict[str, Any]:
    """Mean ± sample std of per-seed differences, with the 95 % t-interval and its verdict."""
    return {**mean_std(diffs), **paired_summary(diffs)} if diffs else mean_std(diffs)


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
        run["family_accuracy"] = family_accuracy(run.get("corruption_accuracy") or {})
    families = [f for f in CORRUPTION_FAMILIES if any(f in r["family_accuracy"] for r in runs)]
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
        entry["family_accuracy"] = {
            f: mean_std([r["family_accuracy"].get(f) for r in rows]) for f in families
        }
        per_method[m] = entry
    wanted = [(m, ref) for ref in references if ref in per_method for m in methods if m != ref]
    wanted += [(m, ref) for m, ref in MOMENTUM_PAIRS if m in per_method and ref in per_method]
    paired: dict[str, Any] = {}
    for m, ref in wanted:
        ref_runs = {r["seed"]: r for r in runs if r["method"] == ref}
        mine = {r["seed"]: r for r in runs if r["method"] == m}
        seeds = sorted(set(mine) & set(ref_runs))
        if not seeds:
            continue
        diffs: dict[str, Any] = {"seeds": seeds}
        for key in SCALARS:
            if key == "mCE" and not has_ce:
                continue
            pairs = [(mine[s].get(key), ref_runs[s].get(key)) for s in seeds]
            diffs[key] = _paired([a - b for a, b in pairs if a is not None and b is not None])
        diffs["family_accuracy"] = {
            f: _paired(
                [
                    mine[s]["family_accuracy"][f] - ref_runs[s]["family_accuracy"][f]
                    for s in seeds
                    if f in mine[s]["family_accuracy"] and f in ref_runs[s]["family_accuracy"]
                ]
            )
            for f in families
        }
        paired[f"{m} - {ref}"] = diffs
    severities = next((r["severities"] for r in runs if r.get("severities")), None)
    return {
        "severities": severities,
        "methods": per_method,
        "paired_differences": paired,
        "families": {f: list(CORRUPTION_FAMILIES[f]) for f in families},
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
    families = list(summary.get("families") or {})
    if families:
        lines += ["", "| method | " + " | ".join(f"{f} acc (%)" for f in families) + " |"]
        lines.append("|---|" + "---|" * len(families))
        for m, e in summary["methods"].items():
            cells = [_pm(e["family_accuracy"].get(f)) for f in families]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if summary["paired_differences"]:
        lines += [
            "",
            "| paired difference (same seeds) | n | Δ clean (points) | Δ corruption (points) "
            "| Δ drop (points) | Δ mCE (points) | 95% interval of Δ corruption |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, d in summary["paired_differences"].items():
            corr = d["mean_corruption_accuracy"]
            ci = corr.get("ci95")
            interval = (
                "—" if not ci else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}] {corr['status']}"
            )
            lines.append(
                f"| {name} | {len(d['seeds'])} | {_pm(d['clean_accuracy'])} | "
                f"{_pm(corr)} | {_pm(d['accuracy_drop'])} | {_pm(d.get('mCE'), digits=1)} | "
                f"{interval} |"
            )
        if families:
            lines += [
                "",
                "| paired difference | " + " | ".join(f"Δ {f} (points)" for f in families) + " |",
                "|---|" + "---|" * len(families),
            ]
            for name, d in summary["paired_differences"].items():
                cells = [_pm(d["family_accuracy"].get(f)) for f in families]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
