"""PNG plots of ``nashmoe compare`` (matplotlib, imported lazily: ``pip install 'nashmoe[plot]'``).

- ``loss_curves.png``: training loss per method over steps (mean over seeds, light smoothing) with
  the validation losses at the evaluation steps, and the test perplexity per method.
- ``alpha.png``: the Nash weights per MoE layer over training, as shares ``α_i / Σ_j α_j`` (α
  itself scales like 1/‖τ‖; the share shows which experts the bargain favours), first seed.
- ``similarity.png``: mean cosine similarity between expert outputs per MoE layer (off-diagonal
  mean of the [N, N] matrix; the NAMEx paper's cooperation-vs-competition view), mean over
  seeds; ``similarity_matrices.png``: the matrices of the first seed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nashmoe._optional import pyplot

__all__ = ["plot_alpha", "plot_loss_curves", "plot_similarity"]


def _save(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` and free it (pyplot keeps every open figure alive)."""
    if tight:
        fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def _ema(values: Sequence[float], weight: float) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else weight * acc + (1 - weight) * v
        out.append(acc)
    return out


def _column(metrics: Mapping[str, list], key: str) -> tuple[list[float], list[float]]:
    steps, vals = [], []
    for s, v in zip(metrics.get("step", []), metrics.get(key, [])):
        if v is not None and v == v:
            steps.append(s)
            vals.append(v)
    return steps, vals


def plot_loss_curves(
    metrics: Mapping[str, Sequence[Mapping[str, list]]],
    summary: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
) -> Path:
    """``metrics[method]`` is a list (one per seed) of ``read_metrics`` columns."""
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    cmap = plt.get_cmap("tab10")
    for i, (method, runs) in enumerate(metrics.items()):
        color = cmap(i % 10)
        curves = [_column(m, "train/loss") for m in runs]
        curves = [c for c in curves if c[0]]
        if curves:
            n = min(len(c[0]) for c in curves)
            steps = curves[0][0][:n]
            mean = [sum(c[1][j] for c in curves) / len(curves) for j in range(n)]
            weight = 0.6 if n > 20 else 0.0
            ax.plot(steps, _ema(mean, weight), color=color, label=method, lw=1.4)
        # "val/loss" in metrics.csv files written before the split was named "validation"
        vals = [
            _column(m, "validation/loss" if "validation/loss" in m else "val/loss") for m in runs
        ]
        vals = [v for v in vals if v[0]]
        if vals:
            n = min(len(v[0]) for v in vals)
            ax.plot(
                vals[0][0][:n],
                [sum(v[1][j] for v in vals) / len(vals) for j in range(n)],
                "o--",
                color=color,
                ms=4,
                lw=0.8,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("training loss (lines) and validation loss (markers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    names = [r["method"] for r in summary]
    means = [r["test_ppl"][0] for r in summary]
    errs = [r["test_ppl"][1] or 0.0 for r in summary]
    bx.barh(names, means, xerr=errs, color=[cmap(i % 10) for i in range(len(names))])
    bx.invert_yaxis()
    lo = min(means) if means else 0
    hi = max(m + e for m, e in zip(means, errs)) if means else 1
    bx.set_xlim(lo - 0.15 * (hi - lo + 1e-9) - 0.5, hi + 0.05 * (hi - lo + 1e-9) + 0.1)
    bx.set_xlabel("test perplexity (best validation weights)")
    bx.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def plot_alpha(
    metrics: Mapping[str, Mapping[str, list]], path: str | os.PathLike[str]
) -> Path | None:
    """``metrics[method]`` is one run's ``read_metrics`` columns; methods without α are skipped.
    Returns None when no method logged α."""
    grids: dict[str, dict[int, dict[int, tuple[list[float], list[float]]]]] = {}
    for method, cols in metrics.items():
        layers: dict[int, dict[int, tuple[list[float], list[float]]]] = {}
        for key in cols:
            if key.startswith("alpha/l"):
                _, layer, expert = key.split("/")
                layers.setdefault(int(layer[1:]), {})[int(expert[1:])] = _column(cols, key)
        if layers:
            grids[method] = layers
    if not grids:
        return None
    plt = pyplot()
    n_layers = max(max(g) + 1 for g in grids.values())
    fig, axes = plt.subplots(
        len(grids),
        n_layers,
        figsize=(3.2 * n_layers, 2.4 * len(grids)),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for r, (method, layers) in enumerate(grids.items()):
        for c in range(n_layers):
            ax = axes[r][c]
            experts = layers.get(c, {})
            if experts:
                steps = next(iter(experts.values()))[0]
                n = min(len(v[1]) for v in experts.values())
                totals = [sum(v[1][j] for v in experts.values()) for j in range(n)]
                for e, (_, vals) in sorted(experts.items()):
                    share = [vals[j] / totals[j] if totals[j] else float("nan") for j in range(n)]
                    ax.plot(steps[:n], share, lw=1.0, label=f"e{e}")
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(f"MoE layer {c}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{method}\nα share", fontsize=8)
            if r == len(grids) - 1:
                ax.set_xlabel("step", fontsize=8)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle("Nash weights per layer over training (α_i / Σ_j α_j)", fontsize=10)
    return _save(fig, path)


def plot_similarity(
    similarity: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike[str]
) -> Path | None:
    """``similarity[method]`` is a list (one per seed) of ``{"matrices": [[N, N] per layer],
    "mean_offdiag": [per layer]}``; methods without MoE layers are skipped. Writes ``path``
    (mean off-diagonal similarity per layer) and ``<stem>_matrices.png`` beside it (the matrices
    of the first seed)."""
    items = {m: s for m, s in similarity.items() if s and s[0].get("matrices")}
    if not items:
        return None
    plt = pyplot()
    path = Path(path)
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    n_layers = max(len(s[0]["matrices"]) for s in items.values())
    for i, (method, seeds) in enumerate(items.items()):
        n = min(len(s["mean_offdiag"]) for s in seeds)
        mean = [sum(s["mean_offdiag"][j] for s in seeds) / len(seeds) for j in range(n)]
        ax.plot(range(n), mean, "o-", color=cmap(i % 10), label=method)
    ax.set_xticks(range(n_layers))
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("mean cosine similarity (i ≠ j)")
    ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.02)
    ax.set_title("similarity between expert outputs on validation tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    _save(fig, path)

    fig, axes = plt.subplots(
        len(items),
        n_layers,
        figsize=(1.9 * n_layers + 1.2, 1.9 * len(items) + 0.6),
        squeeze=False,
    )
    im = None
    for r, (method, seeds) in enumerate(items.items()):
        for c in range(n_layers):
            a = axes[r][c]
            a.set_xticks([])
            a.set_yticks([])
            if c < len(seeds[0]["matrices"]):
                im = a.imshow(seeds[0]["matrices"][c], vmin=-1, vmax=1, cmap="RdBu_r")
            if c == 0:
                a.set_ylabel(method, fontsize=8)
            if r == 0:
                a.set_title(f"layer {c}", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="cosine similarity")
    fig.suptitle("expert-output cosine similarity matrices (first seed)", fontsize=10)
    _save(fig, path.with_name(path.stem + "_matrices.png"), dpi=100, tight=False)
    return path
