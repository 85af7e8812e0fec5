"""Tables and verdicts of ``nashmoe compare``: per-method summaries (mean ± std over seeds) as
Markdown, and paired differences between methods (the same seed across methods) with 95 %
t-intervals; no winner is named from fewer than :data:`MIN_SEEDS` seeds.

Perplexities are of the best-on-validation weights; test is evaluated once, on those weights.
The standard deviation is the sample standard deviation over seeds (``ddof = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from nashmoe._stats import paired_by_seed, t_quantile_975

__all__ = [
    "MIN_SEEDS",
    "format_bargaining",
    "format_paired",
    "format_table",
    "mean_std",
    "paired_difference",
    "paired_table",
    "summarize",
    "summarize_bargaining",
    "t_quantile_975",
    "verdict",
]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _validation(record: dict[str, Any]) -> dict[str, Any]:
    """A run record's validation metrics (``"valid"`` in records written before 0.x)."""
    return record["validation"] if "validation" in record else record["valid"]


def summarize(runs: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method (in ``methods`` order) from per-run records (``TrainResult.to_dict()``
    plus ``similarity``)."""
    by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    dense = by_method.get("dense") or []
    dense_step = mean_std([r["timing"]["step_time_s"] for r in dense])[0] if dense else None
    rows = []
    for m in methods:
        rs = sorted(by_method.get(m, []), key=lambda r: r["seed"])
        if not rs:
            continue
        step_time = mean_std([r["timing"]["step_time_s"] for r in rs])
        nash = [r["nash"] for r in rs]
        solves = sum(n["solves"] for n in nash)
        residuals = [n["residual_max"] for n in nash if n.get("residual_max") is not None]
        sims = [
            v for r in rs for v in (r.get("similarity") or {}).get("mean_offdiag", []) if v == v
        ]
        base = [r["base_grad_norm"] for r in rs if r.get("base_grad_norm") is not None]
        rows.append(
            {
                "method": m,
                "seeds": [r["seed"] for r in rs],
                "validation_ppl": mean_std([_validation(r)["ppl"] for r in rs]),
                "test_ppl": mean_std([r["test"]["ppl"] for r in rs]),
                "validation_loss": mean_std([_validation(r)["loss"] for r in rs]),
                "test_loss": mean_std([r["test"]["loss"] for r in rs]),
                "params_total": rs[0]["params"]["total"],
                "params_active": rs[0]["params"]["active"],
                "tokens_per_s": mean_std([r["timing"]["tokens_per_s"] for r in rs]),
                "step_time_s": step_time,
                "rel_step_time": (step_time[0] / dense_step) if dense_step else None,
                "nash_solves": solves,
                "nash_residual_max": max(residuals) if residuals else None,
                "nash_fallbacks": sum(n["fallbacks"] for n in nash) if solves else None,
                "nash_not_converged": sum(n["not_converged"] for n in nash) if solves else None,
                "base_grad_norm": mean_std(base)[0] if base else None,
                "expert_similarity": mean_std(sims)[0] if sims else None,
                "bargaining": summarize_bargaining(rs),
            }
        )
    return rows


def summarize_bargaining(runs: Sequence[dict[str, Any]]) -> dict[str, list[float | None]]:
    """``{stat: [per layer]}``: the mean over runs (seeds) of each run's ``bargaining``
    summary (:func:`nashmoe.train.diagnostics.bargaining_summary`, its ``tail_mean``: the mean
    over the last quarter of the logged values). Empty when no run has one."""
    out: dict[str, list[float | None]] = {}
    stats: dict[str, list[list[float | None]]] = {}
    for r in runs:
        for stat, entry in (r.get("bargaining") or {}).items():
            stats.setdefault(stat, []).append(entry["tail_mean"])
    for stat, per_run in stats.items():
        n_layers = max(len(v) for v in per_run)
        out[stat] = []
        for layer in range(n_layers):
            vals = [v[layer] for v in per_run if layer < len(v) and v[layer] is not None]
            out[stat].append(mean_std(vals)[0] if vals else None)
    return out


def format_bargaining(rows: Sequence[dict[str, Any]], key: str = "method") -> str:
    """A Markdown table of the bargaining diagnostics of :func:`summarize` rows (one line per
    row and propagating layer; "" when no row has any). ``key``: the rows' label field."""
    from nashmoe.moe.bargain_stats import BARGAIN_STATS

    lines = [
        f"| {key} | layer | α spread | cos(Σατ, Στ) | step / ‖E_m‖ | mean cos(τ_i, τ_j) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r.get("bargaining") or {}
        n_layers = max((len(v) for v in b.values()), default=0)
        for layer in range(n_layers):
            vals = [(b.get(s) or [None] * n_layers)[layer] for s in BARGAIN_STATS]
            if all(v is None for v in vals):
                continue
            fmts = {"nash_vs_mean_cosine": ".5f", "tau_cosine": ".4f"}
            cells = [
                "—" if v is None else format(v, fmts.get(stat, ".4g"))
                for stat, v in zip(BARGAIN_STATS, vals)
            ]
            lines.append(f"| {r[key]} | {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _pm(ms: tuple[float, float | None], digits: int = 2) -> str:
    m, s = ms
    if s is None:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _opt(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarize` rows."""
    head = (
        "| method | validation ppl | test ppl | params (total / active) | tokens/s | step time "
        "vs dense | Nash residual (max) | fallbacks / not conv. | ‖∂L/∂E_m‖ | expert cos sim |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        fb = (
            "—"
            if r["nash_fallbacks"] is None
            else f"{r['nash_fallbacks']} / {r['nash_not_converged']} of {r['nash_solves']}"
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    r["method"],
                    _pm(r["validation_ppl"]),
                    _pm(r["test_ppl"]),
                    f"{r['params_total'] / 1e6:.3f} M / {r['params_active'] / 1e6:.3f} M",
                    _pm(r["tokens_per_s"], 0),
                    _opt(r["rel_step_time"], ".2f") + ("×" if r["rel_step_time"] else ""),
                    _opt(r["nash_residual_max"], ".1e"),
                    fb,
                    _opt(r["base_grad_norm"], ".2e"),
                    _opt(r["expert_similarity"], ".3f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


#: Fewest seeds from which :func:`verdict` names a winner.
MIN_SEEDS = 3


def _ppl_by_seed(runs: Sequence[dict[str, Any]], split: str = "test") -> dict[str, dict]:
    out: dict[str, dict[int, float]] = {}
    for r in runs:
        if r.get("diverged") or split not in r:
            continue
        out.setdefault(r["method"], {})[int(r["seed"])] = float(r[split]["ppl"])
    return out


def paired_difference(
    runs: Sequence[dict[str, Any]], method: str, reference: str, *, split: str = "test"
) -> dict[str, Any] | None:
    """``method`` minus ``reference`` perplexity, paired by seed (the same seed, hence the same
    initialisation and data order, for both): per-seed differences, their mean, sample std
    (ddof = 1) and 95 % t-interval. ``status``: ``"lower"`` / ``"higher"`` (the interval excludes
    0), ``"within noise"`` (it contains 0) or ``"too few seeds"`` (fewer than 2 paired seeds;
    no interval). None when the two methods share no seed."""
    by = _ppl_by_seed(runs, split)
    a, b = by.get(method, {}), by.get(reference, {})
    paired = paired_by_seed(a, b)
    if paired is None:
        return None
    return {"method": method, "reference": reference, "split": split, **paired}


def paired_table(
    runs: Sequence[dict[str, Any]],
    methods: Sequence[str],
    references: Sequence[str] = ("smoe", "camex"),
    *,
    split: str = "test",
) -> list[dict[str, Any]]:
    """:func:`paired_difference` of every method against each reference in ``methods``."""
    out = []
    for ref in references:
        if ref not in methods:
            continue
        for m in methods:
            if m != ref:
                entry = paired_difference(runs, m, ref, split=split)
                if entry is not None:
                    out.append(entry)
    return out


def format_paired(entries: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`paired_table` entries ("" when there are none)."""
    if not entries:
        return ""
    lines = [
        "| method − reference | seeds | per-seed differences | mean [95% t-interval] | |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(
            f"| {e['method']} − {e['reference']} | {len(e['seeds'])} | "
            + ", ".join(f"{d:+.3g}" for d in e["diffs"])
            + f" | {_fmt_diff(e)} | {e['status']} |"
        )
    return "\n".join(lines)


def _fmt_diff(e: dict[str, Any]) -> str:
    if e["ci95"] is None:
        return f"{e['mean']:+.3g}"
    lo, hi = e["ci95"]
    return f"{e['mean']:+.3g} [{lo:+.3g}, {hi:+.3g}]"


def verdict(rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]] | None = None) -> str:
    """Plain sentences that respect seed noise.

    With fewer than :data:`MIN_SEEDS` seeds no winner is named. With more, the method with the
    lowest mean test perplexity is compared with every other method by paired differences (the
    same seed across methods) and a 95 % t-interval (ddof = 1); a difference whose interval
    contains 0 is "within noise". ``runs`` are the per-run records (without them, only the
    number of seeds is reported)."""
    if not rows:
        return "No runs."
    n_seeds = min(len(r["seeds"]) for r in rows)
    if n_seeds < MIN_SEEDS or runs is None:
        return (
            f"No winner can be named from {n_seeds} seed(s): a difference between methods cannot "
            f"be told from seed noise with fewer than {MIN_SEEDS} seeds (run with --seeds "
            f"{MIN_SEEDS} or more for paired differences with confidence intervals)."
        )
    ranked = sorted(rows, key=lambda r: r["test_ppl"][0])
    best = ranked[0]["method"]
    entries = [paired_difference(runs, r["method"], best) for r in ranked[1:]]
    entries = [e for e in entries if e is not None]
    noisy = [e["method"] for e in entries if e["status"] != "higher"]
    out = [
        f"Lowest mean test perplexity: {best} ({_pm(ranked[0]['test_ppl'])}, "
        f"{len(ranked[0]['seeds'])} seeds). Paired differences to {best} (the other method minus "
        f"{best}, same seed; mean and 95% t-interval, ddof = 1): "
        + "; ".join(
            f"{e['method']} {_fmt_diff(e)}"
            + (" (within noise)" if e["status"] == "within noise" else "")
            for e in entries
        )
        + "."
    ]
    if noisy:
        out.append(
            f"{best} is not ahead of {', '.join(noisy)} beyond seed noise: no single winner."
        )
    elif entries:
        out.append(f"{best} is ahead of every other method beyond seed noise.")
    namex = [r["method"] for r in ranked if r["method"].startswith("namex")]
    others = [r["method"] for r in ranked if not r["method"].startswith("namex")]
    if namex and others:
        e = paired_difference(runs, namex[0], others[0])
        if e is not None and e["ci95"] is not None:
            word = {
                "lower": "lower (better) than",
                "higher": "higher (worse) than",
                "within noise": "within noise of",
            }[e["status"]]
            out.append(
                f"Best NAMEx variant {namex[0]} vs best other method {others[0]}: "
                f"{_fmt_diff(e)} perplexity points, {word} it."
            )
    return " ".join(out)
