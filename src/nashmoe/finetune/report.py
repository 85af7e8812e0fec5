"""Summaries of the fine-tuning experiment: mean ± sample std over seeds, paired differences
between methods (same seed), the Markdown table and the accuracy plot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nashmoe._stats import mean_std, paired_by_seed
from nashmoe.moe import METHODS
from nashmoe.palette import color

__all__ = ["format_table", "mean_std", "paired_difference", "plot_accuracy", "summarize"]

METRICS = ("test_accuracy", "dev_accuracy")


def paired_difference(
    runs: Sequence[dict[str, Any]], method: str, reference: str, *, key: str = "test_accuracy"
) -> dict[str, Any] | None:
    """``method − reference`` of ``key``, paired by seed: per-seed differences, mean, sample std
    and 95 % t-interval; ``status`` ``"higher"`` / ``"lower"`` (the interval excludes 0),
    ``"within noise"``, or ``"too few seeds"``. None when they share no seed."""
    a = {r["seed"]: r[key] for r in runs if r["method"] == method and r.get(key) is not None}
    b = {r["seed"]: r[key] for r in runs if r["method"] == reference and r.get(key) is not None}
    paired = paired_by_seed(a, b)
    if paired is None:
        return None
    return {"method": method, "reference": reference, "metric": key, **paired}


def summarize(
    runs: Sequence[dict[str, Any]], *, references: Sequence[str] = ("smoe", "camex")
) -> dict[str, Any]:
    """Per-method summaries over seeds and paired test-accuracy differences against each
    reference that ran."""
    ran = dict.fromkeys(r["method"] for r in runs)
    order = [m for m in dict.fromkeys(("dense", *METHODS)) if m in ran]
    order += [m for m in ran if m not in order]
    methods: dict[str, Any] = {}
    for m in order:
        rows = sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"])
        ok = [r for r in rows if not r.get("diverged")]
        methods[m] = {
            "seeds": [r["seed"] for r in ok],
            "diverged_seeds": [r["seed"] for r in rows if r.get("diverged")],
            **{k: mean_std([r[k] for r in ok]) for k in METRICS},
            "selected_epoch": [r["selected_epoch"] for r in ok],
            "parameters": ok[0]["parameters"] if ok else None,
            "seconds": mean_std([r["seconds"] for r in ok]),
            "train_sentences_per_s": mean_std([r["train_sentences_per_s"] for r in ok]),
        }
    paired = []
    for ref in references:
        if ref not in methods:
            continue
        for m in order:
            if m != ref:
                entry = paired_difference(runs, m, ref)
                if entry is not None:
                    paired.append(entry)
    return {
        "methods": methods,
        "paired_differences": paired,
        "std": "sample standard deviation over seeds (ddof=1); null with one seed",
    }


def _pm(stat: dict[str, Any], scale: float = 100.0) -> str:
    if stat["mean"] is None:
        return "—"
    text = f"{scale * stat['mean']:.2f}"
    return text if stat["std"] is None else f"{text} ± {scale * stat['std']:.2f}"


def format_table(summary: dict[str, Any]) -> str:
    """Markdown: accuracy per method, then the paired differences (points of accuracy)."""
    lines = [
        "| method | seeds | test acc (%) | dev acc (%) | params total / active (M) | "
        "wall per run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for m, e in summary["methods"].items():
        p = e["parameters"]
        params = "—" if p is None else f"{p['total'] / 1e6:.1f} / {p['active'] / 1e6:.1f}"
        wall = "—" if e["seconds"]["mean"] is None else f"{e['seconds']['mean']:.0f}"
        seeds = str(len(e["seeds"]))
        if e["diverged_seeds"]:
            seeds += f" (+{len(e['diverged_seeds'])} diverged)"
        lines.append(
            f"| {m} | {seeds} | {_pm(e['test_accuracy'])} | {_pm(e['dev_accuracy'])} | "
            f"{params} | {wall} |"
        )
    if summary["paired_differences"]:
        lines += [
            "",
            "| test acc: method − reference | seeds | per-seed (points) "
            "| mean [95% t-interval] | |",
            "|---|---|---|---|---|",
        ]
        for d in summary["paired_differences"]:
            per_seed = ", ".join(f"{100 * x:+.2f}" for x in d["diffs"])
            mean = f"{100 * d['mean']:+.2f}"
            if d["ci95"] is not None:
                mean += f" [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"
            lines.append(
                f"| {d['method']} − {d['reference']} | {len(d['seeds'])} | {per_seed} | {mean} "
                f"| {d['status']} |"
            )
    return "\n".join(lines)


def plot_accuracy(
    summary: dict[str, Any], path: str | os.PathLike[str], *, title: str = "SST-2"
) -> Path:
    """Test and dev accuracy per method: every seed as a dot, the mean ± sample std as a bar."""
    from nashmoe._optional import pyplot

    plt = pyplot("the accuracy plot")
    methods = list(summary["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 0.45 * len(methods) + 1.6), sharey=True)
    for ax, key, label in zip(axes, METRICS, ("test accuracy (%)", "dev accuracy (%)")):
        for i, m in enumerate(methods):
            stat = summary["methods"][m][key]
            c = color(m)
            ax.scatter(
                [100 * v for v in stat["values"]],
                [i] * len(stat["values"]),
                s=14,
                color=c,
                alpha=0.55,
                zorder=2,
            )
            if stat["mean"] is not None:
                err = None if stat["std"] is None else 100 * stat["std"]
                ax.errorbar(
                    100 * stat["mean"], i, xerr=err, fmt="o", ms=6, color=c, capsize=3, zorder=3
                )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(methods)), methods)
    axes[0].invert_yaxis()
    fig.suptitle(f"{title}: upcycled encoder, mean ± std over seeds (dots: seeds)", fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
