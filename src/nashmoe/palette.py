"""One colour per method, the same in every figure of the package and its benchmarks.

Colours are the colour-blind-safe Okabe-Ito set plus a few tab10 tones; families share a hue
(the NAMEx variants are shades of one blue-green family, the baselines are distinct hues), so a
method keeps its colour whichever subset of methods a figure shows. Names that are not listed get
a colour from a fixed fallback list chosen by a stable hash of the name (never by position).
"""

from __future__ import annotations

import hashlib

__all__ = ["COLORS", "color", "colors"]

COLORS: dict[str, str] = {
    # MoE methods (nashmoe compare)
    "dense": "#7f7f7f",
    "smoe": "#000000",
    "smear": "#E69F00",
    "camex": "#D55E00",
    "ep-camex": "#CC79A7",
    "namex": "#56B4E9",
    "namex-full": "#0072B2",
    "namex-mom": "#009E73",
    "namex-full-mom": "#004D40",
    # fairness methods (nashmoe fair)
    "erm": "#7f7f7f",
    "dro": "#000000",
    "ltr": "#E69F00",
    "forml": "#D55E00",
    "meta-gdro": "#CC79A7",
    "nash-ltr": "#56B4E9",
    "nash-forml": "#0072B2",
    "nash-meta-gdro": "#009E73",
    # learning-to-defer losses (nashmoe defer, benchmarks/bench_defer_sweep.py)
    "ce": "#E69F00",
    "ova": "#D55E00",
    "picce_ce": "#0072B2",
    "picce_ova": "#009E73",
}

_FALLBACK = ("#8c564b", "#bcbd22", "#17becf", "#9467bd", "#e377c2", "#1f77b4", "#2ca02c")


def color(name: str) -> str:
    """The colour of method ``name`` (a stable fallback for names not in :data:`COLORS`)."""
    if name in COLORS:
        return COLORS[name]
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return _FALLBACK[digest[0] % len(_FALLBACK)]


def colors(names) -> dict[str, str]:
    """``{name: color(name)}`` for several methods."""
    return {n: color(n) for n in names}
