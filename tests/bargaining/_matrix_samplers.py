"""Seeded families of player matrices G [N, P] for the solver's property tests (TorchJD style).

Every sampler returns float64 vectors whose Nash bargaining problem is feasible unless its name
says otherwise: the rows are shifted along a random unit direction u until ⟨g_i, u⟩ >= margin,
so u improves every player (a Gordan witness) whatever the rank.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DTYPE = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(p: int, gen: torch.Generator) -> Tensor:
    u = torch.randn(p, generator=gen, dtype=DTYPE)
    return u / u.norm()


def _make_feasible(g: Tensor, u: Tensor, margin: float) -> Tensor:
    """Shift each row along u so that ⟨g_i, u⟩ >= margin · ‖g_i‖ (roughly)."""
    proj = g @ u
    norms = g.norm(dim=-1)
    shift = (margin * norms - proj).clamp_min(0)
    return g + shift[:, None] * u


def well_conditioned(n: int, p: int | None = None, *, seed: int = 0, margin: float = 0.3) -> Tensor:
    """Gaussian rows (P >= N: full row rank almost surely), shifted to a comfortable margin."""
    gen = _generator(seed)
    p = p if p is not None else n + 3
    g = torch.randn(n, p, generator=gen, dtype=DTYPE)
    return _make_feasible(g, _unit(p, gen), margin)


def ill_conditioned(n: int, *, seed: int = 0, spread: float = 1e-3) -> Tensor:
    """Nearly collinear rows, g_i = u + spread · r_i: cond(K) is about 1/spread²."""
    gen = _generator(seed)
    p = n + 3
    u = _unit(p, gen)
    r = torch.randn(n, p, generator=gen, dtype=DTYPE)
    return u + spread * r


def rank_deficient(
    n: int, *, seed: int = 0, rank: int | None = None, margin: float = 0.3
) -> Tensor:
    """More players than dimensions (rank(K) = P < N), still feasible."""
    gen = _generator(seed)
    p = rank if rank is not None else max(2, n // 4)
    g = torch.randn(n, p, generator=gen, dtype=DTYPE)
    return _make_feasible(g, _unit(p, gen), margin)


def scaled(n: int, *, seed: int = 0, decades: float = 3.0) -> Tensor:
    """Well-conditioned rows with norms spread over ±``decades`` powers of ten."""
    gen = _generator(seed + 10_000)
    g = well_conditioned(n, seed=seed)
    scales = 10.0 ** ((torch.rand(n, generator=gen, dtype=DTYPE) * 2 - 1) * decades)
    return g * scales[:, None]


def orthogonal(n: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Orthogonal rows with random norms; returns (G, norms)."""
    gen = _generator(seed)
    q, _ = torch.linalg.qr(torch.randn(n + 2, n, generator=gen, dtype=DTYPE))
    norms = 10.0 ** (torch.rand(n, generator=gen, dtype=DTYPE) * 4 - 2)
    return q.T * norms[:, None], norms


def duplicated(n: int, *, seed: int = 0) -> Tensor:
    """A feasible matrix whose first row appears twice (N >= 2)."""
    g = well_conditioned(n - 1, seed=seed)
    return torch.cat((g, g[:1]), dim=0)


def with_zero_row(n: int, *, seed: int = 0) -> Tensor:
    """A feasible matrix with its last row replaced by zeros (degenerate)."""
    g = well_conditioned(n, seed=seed).clone()
    g[-1] = 0.0
    return g


def opposing(p: int = 5, *, seed: int = 0) -> Tensor:
    """g₂ = −g₁: no direction improves both players (infeasible)."""
    g = torch.randn(p, generator=_generator(seed), dtype=DTYPE)
    return torch.stack((g, -g))


def three_at_120(*, scale: float = 1.0) -> Tensor:
    """Three equal-norm vectors at 120° in a plane: they sum to 0 (infeasible)."""
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=DTYPE)
    return scale * torch.stack((angles.cos(), angles.sin()), dim=-1)


def partially_opposing(n: int, *, seed: int = 0) -> Tensor:
    """A feasible matrix in which one player is the negative of another (infeasible)."""
    g = well_conditioned(n, seed=seed).clone()
    g[1] = -2.0 * g[0]
    return g


def near_opposing(eps: float, p: int = 3) -> Tensor:
    """Two players at angle π − 2·eps: feasible with margin about eps (α grows like 1/eps)."""
    g = torch.zeros(2, p, dtype=DTYPE)
    g[0, 0], g[1, 0] = 1.0, -1.0
    g[:, 1] = eps
    return g


FEASIBLE_FAMILIES = {
    "well_conditioned": well_conditioned,
    "ill_conditioned": ill_conditioned,
    "rank_deficient": rank_deficient,
    "scaled": scaled,
}
