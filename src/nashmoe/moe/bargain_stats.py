"""Diagnostics of the bargaining: what the Nash weights change against plain averaging.

The NAMEx paper (ICLR 2026, arXiv 2510.16138) propagates the base expert along Σ_i α_i τ_i, the
Nash bargaining solution among the experts' domain vectors τ_i. In high dimensions the τ_i are
often nearly orthogonal with similar norms; then α_j ≈ 1/‖τ_j‖ is nearly uniform and the Nash
direction is nearly the plain mean's, while its norm is √N whatever the scale of the τ_i
(spec section 3). These quantities, computed by every propagating layer, tell the two effects
apart (spec section 2, "The Nash weights are often close to uniform"):

- ``alpha_spread``: max_i |N·α_i / Σ_j α_j − 1| (0: uniform weights);
- ``nash_vs_mean_cosine``: cos(Σ_i α_i τ_i, Σ_i τ_i) (1: the bargaining keeps the mean's
  direction);
- ``step_rel_norm``: ‖E_m^{(l+1)} − E_m^{(l)}‖ / ‖E_m^{(l)}‖, the length of the propagation
  step relative to the base expert;
- ``tau_cosine``: the mean pairwise cosine of the τ_i (0: orthogonal).

Every function works on detached tensors in float32 at least, costs O(N·P) (no Gram matrix;
P the parameters of one expert) and returns 0-dim tensors, so no host synchronisation happens.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "BARGAIN_STATS",
    "alpha_spread",
    "cosine",
    "mean_pairwise_cosine",
    "propagation_stats",
]

BARGAIN_STATS = ("alpha_spread", "nash_vs_mean_cosine", "step_rel_norm", "tau_cosine")
"""The diagnostics' names, in the order tables list them."""


def _wide(t: Tensor) -> Tensor:
    t = t.detach()
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _sq_norm(tensors: dict[str, Tensor]) -> Tensor:
    return sum(_wide(t).square().sum() for t in tensors.values())


def alpha_spread(alpha: Tensor) -> Tensor:
    """max_i |N·α_i / Σ_j α_j − 1| of weights ``[N]`` (0 for uniform weights)."""
    a = _wide(alpha).reshape(-1)
    return (a.numel() * a / a.sum() - 1).abs().max()


def cosine(a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
    """Cosine between two sets of tensors, each seen as one vector (0 if either is 0)."""
    dot = sum((_wide(a[k]) * _wide(b[k])).sum() for k in a)
    denom = (_sq_norm(a) * _sq_norm(b)).sqrt()
    return torch.where(denom > 0, dot / denom.clamp_min(torch.finfo(denom.dtype).tiny), 0.0)


def mean_pairwise_cosine(vectors: dict[str, Tensor]) -> Tensor:
    """Mean over pairs i ≠ j of cos(v_i, v_j) for ``vectors`` ``{name: [N, *shape]}`` (vector i
    is the concatenation of ``vectors[name][i]``). O(N·P): with unit vectors û_i,
    Σ_{i≠j} ⟨û_i, û_j⟩ = ‖Σ_i û_i‖² − Σ_i ‖û_i‖². A zero vector counts as cosine 0 with every
    other; 1.0 for N = 1 (as :func:`nashmoe.moe.analysis.mean_offdiagonal`)."""
    vs = {k: _wide(v) for k, v in vectors.items()}
    n = next(iter(vs.values())).shape[0]
    sq = sum(v.reshape(n, -1).square().sum(dim=1) for v in vs.values())  # [N]
    inv = torch.where(sq > 0, sq.clamp_min(torch.finfo(sq.dtype).tiny).rsqrt(), 0.0)
    if n == 1:
        return torch.ones((), dtype=sq.dtype, device=sq.device)
    total = sum(
        (v * inv.view(n, *([1] * (v.ndim - 1)))).sum(dim=0).square().sum() for v in vs.values()
    )
    units = (sq > 0).to(sq.dtype).sum()
    return (total - units) / (n * (n - 1))


def propagation_stats(
    players: dict[str, Tensor] | None,
    alpha: Tensor | None,
    direction: dict[str, Tensor] | None,
    step: dict[str, Tensor],
    base: dict[str, Tensor],
    gamma: float,
) -> dict[str, Tensor]:
    """The diagnostics of one propagating layer (see the module docstring).

    Args:
        players: the vectors bargained on (or averaged, EP-CAMEx), ``{name: [N, *shape]}``;
            None where they are not formed (no ``tau_cosine``).
        alpha: the Nash weights ``[N]`` (None for EP-CAMEx: no ``alpha_spread`` and no
            ``nash_vs_mean_cosine``).
        direction: Σ_i α_i players_i (None for EP-CAMEx).
        step: what is added to the base times γ: E_m^{(l+1)} = E_m^{(l)} + γ·step.
        base: E_m^{(l)}.
        gamma: γ.
    """
    out: dict[str, Tensor] = {}
    if players is not None and alpha is not None and direction is not None:
        out["alpha_spread"] = alpha_spread(alpha)
        total = {k: _wide(v).sum(dim=0) for k, v in players.items()}
        out["nash_vs_mean_cosine"] = cosine(direction, total)
    base_norm = _sq_norm(base).sqrt()
    step_norm = abs(float(gamma)) * _sq_norm(step).sqrt()
    out["step_rel_norm"] = torch.where(
        base_norm > 0,
        step_norm / base_norm.clamp_min(torch.finfo(base_norm.dtype).tiny),
        float("nan"),
    )
    if players is not None:
        out["tau_cosine"] = mean_pairwise_cosine(players)
    return out
