"""Tables of ``nashmoe compare``: per-method summaries (mean ± std over seeds) as Markdown.

Perplexities are of the best-on-validation weights; test is evaluated once, on those weights.
The standard deviation is the sample standard deviation over seeds (``ddof = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["format_table", "mean_std", "summarize", "verdict"]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


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
                "valid_ppl": mean_std([r["valid"]["ppl"] for r in rs]),
                "test_ppl": mean_std([r["test"]["ppl"] for r in rs]),
                "valid_loss": mean_std([r["valid"]["loss"] for r in rs]),
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
            }
        )
    return rows


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
        "| method | valid ppl | test ppl | params (total / active) | tokens/s | step time "
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
                    _pm(r["valid_ppl"]),
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


def verdict(rows: Sequence[dict[str, Any]]) -> str:
    """Plain sentences: which method has the lowest mean test perplexity, by how much, and where
    the NAMEx variants stand."""
    if not rows:
        return "No runs."
    ranked = sorted(rows, key=lambda r: r["test_ppl"][0])
    best = ranked[0]
    out = [
        f"Lowest mean test perplexity: {best['method']} ({_pm(best['test_ppl'])}, "
        f"{len(best['seeds'])} seed(s))."
    ]
    if len(ranked) > 1:
        second = ranked[1]
        gap = second["test_ppl"][0] - best["test_ppl"][0]
        sd = [x["test_ppl"][1] for x in (best, second) if x["test_ppl"][1] is not None]
        noise = f" (seed std up to {max(sd):.2f})" if sd else ""
        out.append(
            f"Runner-up: {second['method']}, {gap:.3g} perplexity points higher "
            f"({100 * gap / best['test_ppl'][0]:.1f}%){noise}."
        )
    namex = [r for r in ranked if r["method"].startswith("namex")]
    if namex and not best["method"].startswith("namex"):
        nb = namex[0]
        gap = nb["test_ppl"][0] - best["test_ppl"][0]
        out.append(
            f"NAMEx does not win here: its best variant, {nb['method']}, is {gap:.3g} points "
            f"({100 * gap / best['test_ppl'][0]:.1f}%) behind {best['method']}."
        )
    elif namex:
        others = [r for r in ranked if not r["method"].startswith("namex")]
        if others:
            ob = others[0]
            gap = ob["test_ppl"][0] - best["test_ppl"][0]
            out.append(
                f"The best non-NAMEx method, {ob['method']}, is {gap:.3g} points "
                f"({100 * gap / best['test_ppl'][0]:.1f}%) behind."
            )
    return " ".join(out)
