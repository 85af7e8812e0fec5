"""PNG plots of ``nashmoe compare`` (matplotlib, imported lazily: ``pip install 'nashmoe[plot]'``).

- ``loss_curves.png``: training loss per method over steps (mean over seeds; the smoothing, an
  exponential moving average, is stated in the title) with the validation losses at the
  evaluation steps, and the test perplexity per method as a dot plot (mean ± sample std, ddof = 1).
- ``paired.png``: each method minus smoe and minus camex, per seed (the same seed for both), with
  the mean and its 95 % t-interval; an interval that crosses 0 is within seed noise.
- ``efficiency.png``: test perplexity against active parameters and against tokens/s.
- ``alpha.png``: the Nash weights per MoE layer over training, as shares ``α_i / Σ_j α_j`` (α
  itself scales like 1/‖τ‖; the share shows which experts the bargain favours), first seed.
- ``bargaining.png``: the bargaining diagnostics of every propagating layer over training
  (:mod:`nashmoe.moe.bargain_stats`: α spread, cosine of the Nash direction with the mean,
  step length relative to ‖E_m‖, mean pairwise cosine of the τ_i), first seed.
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
from nashmoe.palette import color as method_color

__all__ = [
    "plot_alpha",
    "plot_bargaining",
    "plot_efficiency",
    "plot_loss_curves",
    "plot_paired",
    "plot_similarity",
]

#: EMA weight of the training-loss curves (with more than 20 logged points; else unsmoothed).
SMOOTHING = 0.6


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
    smoothed = False
    for method, runs in metrics.items():
        color = method_color(method)
        curves = [_column(m, "train/loss") for m in runs]
        curves = [c for c in curves if c[0]]
        if curves:
            n = min(len(c[0]) for c in curves)
            steps = curves[0][0][:n]
            mean = [sum(c[1][j] for c in curves) / len(curves) for j in range(n)]
            weight = SMOOTHING if n > 20 else 0.0
            smoothed = smoothed or weight > 0
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
    smoothing = f"EMA-smoothed, weight {SMOOTHING}" if smoothed else "unsmoothed"
    ax.set_title(
        f"training loss (lines: mean over seeds, {smoothing}) and validation loss (markers)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    _dot_plot(bx, summary)
    return _save(fig, path)


def _dot_plot(bx: Any, summary: Sequence[Mapping[str, Any]]) -> None:
    """Test perplexity per method: a dot at the mean, a line for ± one sample std (no bars, so
    the axis need not start at zero and a small gap is not drawn as a large one)."""
    names = [r["method"] for r in summary]
    n_seeds = [len(r.get("seeds", [])) for r in summary]
    for i, r in enumerate(summary):
        mean, std = r["test_ppl"]
        bx.errorbar(
            mean,
            i,
            xerr=std if std is not None else None,
            fmt="o",
            color=method_color(r["method"]),
            capsize=3,
            ms=6,
        )
    bx.set_yticks(range(len(names)), names)
    bx.invert_yaxis()
    seeds = f"{min(n_seeds)}" if n_seeds and min(n_seeds) == max(n_seeds) else "per-method"
    bx.set_xlabel("test perplexity (best validation weights)")
    bx.set_title(
        f"mean ± sample std (ddof = 1) over {seeds} seed(s)"
        + ("; one seed: no interval" if n_seeds and min(n_seeds) < 2 else ""),
        fontsize=9,
    )
    bx.grid(alpha=0.3, axis="x")


def plot_paired(entries: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Paired differences (:func:`nashmoe.train.report.paired_table`): one panel per reference
    (smoe, camex), one row per method: the per-seed differences (small dots), their mean (a large
    dot) and 95 % t-interval (a line; none with one seed), and 0 (no difference). Returns None
    when there is nothing to draw."""
    refs = list(dict.fromkeys(e["reference"] for e in entries))
    if not refs:
        return None
    plt = pyplot()
    rows = max(sum(1 for e in entries if e["reference"] == r) for r in refs)
    fig, axes = plt.subplots(
        1, len(refs), figsize=(5.2 * len(refs), 0.45 * rows + 1.6), squeeze=False
    )
    for ax, ref in zip(axes[0], refs):
        mine = [e for e in entries if e["reference"] == ref]
        for i, e in enumerate(mine):
            c = method_color(e["method"])
            ax.plot(e["diffs"], [i] * len(e["diffs"]), "o", color=c, ms=3, alpha=0.5)
            if e.get("ci95"):
                lo, hi = e["ci95"]
                ax.plot([lo, hi], [i, i], "-", color=c, lw=2)
            ax.plot([e["mean"]], [i], "D", color=c, ms=6)
        ax.axvline(0.0, color="0.3", lw=1, ls="--")
        ax.set_yticks(range(len(mine)), [e["method"] for e in mine])
        ax.invert_yaxis()
        ax.set_xlabel(f"test perplexity: method − {ref} (same seed; < 0: better)")
        ax.set_title(f"paired differences to {ref}: seeds (dots), mean, 95% t-interval", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def plot_efficiency(
    summary: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path | None:
    """Test perplexity against active parameters (left) and against training throughput in
    tokens/s (right), mean ± sample std over seeds. Returns None without rows."""
    if not summary:
        return None
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for r in summary:
        c = method_color(r["method"])
        mean, std = r["test_ppl"]
        ax.errorbar(r["params_active"] / 1e6, mean, yerr=std, fmt="o", color=c, capsize=3,
                    label=r["method"])  # fmt: skip
        tps, tps_std = r["tokens_per_s"]
        bx.errorbar(tps, mean, xerr=tps_std, yerr=std, fmt="o", color=c, capsize=3)
    ax.set_xlabel("active parameters (millions)")
    ax.set_ylabel("test perplexity (mean ± sample std)")
    bx.set_xlabel("training throughput (tokens/s; contended if --jobs > 1)")
    ax.set_title("perplexity against active parameters", fontsize=9)
    bx.set_title("perplexity against throughput", fontsize=9)
    for a in (ax, bx):
        a.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
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


_BARGAIN_TITLES = {
    "alpha_spread": "α spread  max_i |N α_i / Σα − 1|",
    "nash_vs_mean_cosine": "cos(Σ α_i τ_i, Σ τ_i)",
    "step_rel_norm": "step norm / ‖E_m‖",
    "tau_cosine": "mean pairwise cos(τ_i, τ_j)",
}


def plot_bargaining(
    metrics: Mapping[str, Mapping[str, list]], path: str | os.PathLike[str]
) -> Path | None:
    """``metrics[label]`` is one run's ``read_metrics`` columns (a method, or an ablation
    setting); one panel per diagnostic, one line per (label, layer); labels without
    diagnostics are skipped. Returns None when no run logged any."""
    from nashmoe.moe.bargain_stats import BARGAIN_STATS

    lines: dict[str, list[tuple[str, int, tuple[list[float], list[float]]]]] = {}
    for label, cols in metrics.items():
        for stat in BARGAIN_STATS:
            prefix = f"bargain/{stat}/l"
            for key in sorted(k for k in cols if k.startswith(prefix)):
                curve = _column(cols, key)
                if curve[0]:
                    lines.setdefault(stat, []).append((label, int(key[len(prefix) :]), curve))
    if not lines:
        return None
    plt = pyplot()
    stats = [s for s in BARGAIN_STATS if s in lines]
    fig, axes = plt.subplots(1, len(stats), figsize=(4.2 * len(stats), 3.6), squeeze=False)
    styles = ("-", "--", ":", "-.")
    for ax, stat in zip(axes[0], stats):
        for label, layer, (steps, vals) in lines[stat]:
            ax.plot(
                steps,
                vals,
                color=method_color(label),
                ls=styles[layer % len(styles)],
                lw=1.2,
                label=f"{label} l{layer}",
            )
        ax.set_title(_BARGAIN_TITLES[stat], fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    # the legend where every line is (EP-CAMEx has no α panels)
    fullest = max(range(len(stats)), key=lambda i: len(lines[stats[i]]))
    axes[0][fullest].legend(fontsize=6)
    fig.suptitle(
        "What the bargaining changes, per propagating layer (interval means, first seed)",
        fontsize=10,
    )
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
    fig, ax = plt.subplots(figsize=(7, 4.2))
    n_layers = max(len(s[0]["matrices"]) for s in items.values())
    for method, seeds in items.items():
        n = min(len(s["mean_offdiag"]) for s in seeds)
        mean = [sum(s["mean_offdiag"][j] for s in seeds) / len(seeds) for j in range(n)]
        ax.plot(range(n), mean, "o-", color=method_color(method), label=method)
    ax.set_xticks(range(n_layers))
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("mean cosine similarity (i ≠ j)")
    ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.02)
    ax.set_title("similarity between expert outputs on validation tokens (mean over seeds)")
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
