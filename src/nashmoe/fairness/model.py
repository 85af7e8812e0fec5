"""The classifier of the Nash meta-learning reference code: a small MLP.

d → 128 → 64 → 2 with ReLU and Dropout(p) after each hidden layer (Zeng et al., NeurIPS 2024,
arXiv 2406.07029; fairness.md, section 8). Built from ``nn.Linear`` layers only, so the fast
"ghost" hypergradient backend of :mod:`nashmoe.fairness.lookahead` applies to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["fair_mlp"]


def fair_mlp(
    n_features: int,
    *,
    hidden: Sequence[int] = (128, 64),
    dropout: float = 0.2,
    n_classes: int = 2,
) -> nn.Sequential:
    """``nn.Sequential`` MLP: Linear → ReLU → Dropout per hidden width, then a Linear head."""
    if n_features < 1:
        raise ValueError(f"n_features must be positive, got {n_features}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    if any(h < 1 for h in hidden) or n_classes < 2:
        raise ValueError(f"hidden widths and n_classes must be positive, got {hidden}, {n_classes}")
    layers: list[nn.Module] = []
    width = n_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)
