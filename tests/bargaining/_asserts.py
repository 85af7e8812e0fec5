"""Shared assertions for Nash bargaining solvers and aggregators (TorchJD style).

Each takes the player vectors G [..., N, P] (float64) and what the solver returned, and checks one
property of the Nash bargaining solution with a naive float64 reference written for clarity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from nashmoe.bargaining import NashSolution, NashStatus

Solver = Callable[[Tensor], tuple[NashSolution, Tensor]]


def gram_of(g: Tensor) -> Tensor:
    return g @ g.mT


def residual(gram: Tensor, alpha: Tensor) -> Tensor:
    """‖Kα − 1/α‖ / ‖1/α‖ in float64, computed naively."""
    k = gram.double()
    a = alpha.double()
    inv = 1.0 / a
    return ((k @ a[..., None])[..., 0] - inv).norm(dim=-1) / inv.norm(dim=-1)


def assert_structure(solution: NashSolution, batch_shape: tuple[int, ...], n: int) -> None:
    """Shapes and dtypes; α finite everywhere and positive; the residual finite unless
    degenerate."""
    assert solution.alpha.shape == (*batch_shape, n)
    assert solution.residual.shape == batch_shape
    assert solution.iterations.shape == batch_shape
    assert solution.status.shape == batch_shape
    assert solution.status.dtype == torch.int64
    assert solution.iterations.dtype == torch.int64
    assert bool(torch.isfinite(solution.alpha).all())
    assert bool((solution.alpha > 0).all())
    degenerate = solution.status == NashStatus.DEGENERATE
    assert bool(torch.isfinite(solution.residual[~degenerate]).all())
    assert set(solution.status.reshape(-1).tolist()) <= {s.value for s in NashStatus}


def assert_solves(gram: Tensor, solution: NashSolution, rtol: float = 1e-6) -> None:
    """Status OK and K α = 1/α to ``rtol``, checked independently of the reported residual."""
    assert bool(solution.ok.all()), solution.status_counts()
    res = residual(gram, solution.alpha)
    assert float(res.max()) <= rtol, float(res.max())
    # The reported residual is the same quantity (computed before α is cast to the output
    # dtype, so it may differ by that rounding).
    rounding = 4 * torch.finfo(solution.alpha.dtype).eps
    torch.testing.assert_close(
        solution.residual.double(), res, rtol=1e-3, atol=1e-3 * rtol + rounding
    )


def assert_non_conflicting(
    g: Tensor, solution: NashSolution, direction: Tensor, rtol: float
) -> None:
    """⟨g_i, d⟩ = 1/α_i > 0 for every player, and ‖d‖² = N."""
    n = g.shape[-2]
    gains = (g.double() @ direction.double()[..., None])[..., 0]
    assert bool((gains > 0).all())
    torch.testing.assert_close(gains, 1.0 / solution.alpha.double(), rtol=rtol, atol=0.0)
    norm2 = direction.double().square().sum(-1)
    torch.testing.assert_close(norm2, torch.full_like(norm2, float(n)), rtol=rtol, atol=0.0)


def assert_permutation_equivariant(solve: Solver, g: Tensor, seed: int, rtol: float) -> None:
    """Permuting the players permutes α and leaves the direction unchanged."""
    perm = torch.randperm(g.shape[-2], generator=torch.Generator().manual_seed(seed))
    sol, d = solve(g)
    sol_p, d_p = solve(g[..., perm, :])
    torch.testing.assert_close(sol_p.alpha, sol.alpha[..., perm], rtol=rtol, atol=0.0)
    torch.testing.assert_close(d_p, d, rtol=rtol, atol=rtol * float(d.abs().max()))


def assert_scale_invariant(solve: Solver, g: Tensor, scales: Tensor, rtol: float) -> None:
    """g_i → c_i g_i gives α_i → α_i / c_i and the same direction (scale invariance; the NBS is
    not linear under scaling)."""
    sol, d = solve(g)
    sol_s, d_s = solve(g * scales[..., :, None])
    torch.testing.assert_close(sol_s.alpha, sol.alpha / scales, rtol=rtol, atol=0.0)
    torch.testing.assert_close(d_s, d, rtol=rtol, atol=rtol * float(d.abs().max()))


def assert_non_differentiable(solve: Solver, g: Tensor) -> None:
    """α is a constant for autograd: it does not require grad, and the direction's gradient with
    respect to G is that of Σ α_i g_i with α fixed (∂d/∂g_i = α_i I)."""
    g = g.detach().clone().requires_grad_(True)
    sol, d = solve(g)
    assert not sol.alpha.requires_grad
    weights = torch.randn(d.shape, dtype=d.dtype, generator=torch.Generator().manual_seed(0))
    (d * weights).sum().backward()
    expected = sol.alpha.detach()[..., :, None] * weights[..., None, :]
    torch.testing.assert_close(g.grad, expected.to(g.grad.dtype))
