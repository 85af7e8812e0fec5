"""Fault and edge cases: the Nash bargaining solver at extreme scales (issue 17, item 6).

The Nash bargaining solution is scale-invariant: g_i → c·g_i gives α → α/c and the same direction,
of norm √N. ``nash_direction`` must honour that in float32 too, where the Gram matrix of vectors
scaled by 1e20 overflows and that of vectors scaled by 1e-25 underflows unless it is formed after
normalising the vectors.
"""

from __future__ import annotations

import math

import pytest
import torch

from nashmoe.bargaining import NashStatus, nash_bargaining, nash_direction


class ms:
    @staticmethod
    def well_conditioned(n: int, *, seed: int) -> torch.Tensor:
        """Gaussian rows in N + 3 dimensions, shifted so that ⟨g_i, u⟩ >= 0.3 ‖g_i‖."""
        gen = torch.Generator().manual_seed(seed)
        g = torch.randn(n, n + 3, generator=gen, dtype=torch.float64)
        u = torch.randn(n + 3, generator=gen, dtype=torch.float64)
        u = u / u.norm()
        shift = (0.3 * g.norm(dim=-1) - g @ u).clamp_min(0)
        return g + shift[:, None] * u

    @staticmethod
    def with_zero_row(n: int, *, seed: int) -> torch.Tensor:
        g = ms.well_conditioned(n, seed=seed)
        g[-1] = 0.0
        return g

    @staticmethod
    def opposing(p: int, *, seed: int) -> torch.Tensor:
        g = torch.randn(p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return torch.stack((g, -g))


SCALES = [1e20, 1e-20, 1e-25, 1e30]
DTYPES = [torch.float32, torch.float64]
RTOL = {torch.float32: 2e-5, torch.float64: 1e-10}


def _reference(g: torch.Tensor):
    return nash_direction(g, tol=1e-12)


def _check_against_reference(g: torch.Tensor, c: torch.Tensor, dtype: torch.dtype) -> None:
    """Solving c ⊙ g in ``dtype`` gives α / c, the same direction, norm √N and gains 1/α."""
    ref, d_ref = _reference(g)
    x = (g * c[..., None]).to(dtype)
    sol, d = nash_direction(x, tol=1e-12)
    assert bool(sol.ok.all()), sol.status_counts()
    assert sol.alpha.dtype == dtype and d.dtype == dtype
    assert bool(torch.isfinite(sol.alpha).all()) and bool((sol.alpha > 0).all())
    rtol = RTOL[dtype]
    torch.testing.assert_close(sol.alpha.double() * c, ref.alpha, rtol=rtol, atol=0.0)
    torch.testing.assert_close(d.double(), d_ref, rtol=rtol, atol=rtol * float(d_ref.abs().max()))
    n = g.shape[-2]
    norm = d.double().norm(dim=-1)
    torch.testing.assert_close(norm, torch.full_like(norm, math.sqrt(n)), rtol=rtol, atol=0.0)
    gains = (x.double() @ d.double()[..., None])[..., 0]
    torch.testing.assert_close(gains, 1.0 / sol.alpha.double(), rtol=10 * rtol, atol=0.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("scale", SCALES)
def test_global_scale(scale: float, dtype: torch.dtype) -> None:
    g = ms.well_conditioned(6, seed=1)
    _check_against_reference(g, torch.full((6,), scale, dtype=torch.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_batch_of_problems_at_different_scales(dtype: torch.dtype) -> None:
    g = torch.stack([ms.well_conditioned(5, seed=s) for s in range(len(SCALES) + 1)])
    c = torch.tensor([*SCALES, 1.0], dtype=torch.float64)[:, None].expand(-1, 5)
    _check_against_reference(g, c, dtype)


@pytest.mark.parametrize(
    ("dtype", "base", "decades"),
    [
        (torch.float32, 1e20, 6.0),  # entries from 1e14 to 1e26
        (torch.float32, 1e-20, 4.0),  # entries from 1e-24 to 1e-16
        (torch.float64, 1e100, 6.0),
        (torch.float64, 1e-100, 6.0),
    ],
)
def test_mixed_player_scales(dtype: torch.dtype, base: float, decades: float) -> None:
    # Well-defined: every player's Gram entries stay normal numbers after normalisation.
    g = ms.well_conditioned(8, seed=2)
    c = base * 10.0 ** torch.linspace(-decades, decades, 8, dtype=torch.float64)
    _check_against_reference(g, c, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("scale", SCALES)
def test_zero_player_is_still_degenerate(scale: float, dtype: torch.dtype) -> None:
    g = (ms.with_zero_row(4, seed=3) * scale).to(dtype)
    sol, d = nash_direction(g)
    assert int(sol.status) == NashStatus.DEGENERATE
    torch.testing.assert_close(sol.alpha, torch.full_like(sol.alpha, 0.25))
    assert bool(torch.isnan(sol.residual))
    torch.testing.assert_close(d.double(), g.double().mean(0), rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_all_zero_and_empty_vectors_are_degenerate(dtype: torch.dtype) -> None:
    for g in (torch.zeros(3, 5, dtype=dtype), torch.zeros(3, 0, dtype=dtype)):
        sol, d = nash_direction(g)
        assert int(sol.status) == NashStatus.DEGENERATE
        assert d.shape == (g.shape[-1],) and bool((d == 0).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_infeasible_at_extreme_scale(scale: float, dtype: torch.dtype) -> None:
    g = (ms.opposing(5, seed=4) * scale).to(dtype)
    sol, d = nash_direction(g)
    assert int(sol.status) == NashStatus.INFEASIBLE
    torch.testing.assert_close(sol.alpha, torch.full_like(sol.alpha, 0.5))
    # The residual is that of the uniform weights on the unscaled problem (capped to be finite).
    assert bool(torch.isfinite(sol.residual)) and float(sol.residual) > 0.1
    assert bool(torch.isfinite(d).all())


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_vectors_still_raise(bad: float) -> None:
    g = ms.well_conditioned(3, seed=5).float()
    g[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        nash_direction(g)


def test_implicit_gradient_at_scale() -> None:
    # d(c·G) = d(G), so ∂d/∂G at c·G is (1/c) ∂d/∂G at G.
    g = ms.well_conditioned(4, seed=6)
    w = torch.randn(g.shape[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for c in (1.0, 1e20):
        x = (g * c).requires_grad_(True)
        sol, d = nash_direction(x, differentiable=True, tol=1e-13)
        assert sol.alpha.requires_grad
        (d * w).sum().backward()
        grads.append(x.grad * c)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_float32_gram_at_extreme_but_finite_scale(scale: float) -> None:
    # nash_bargaining itself is scale-invariant as long as the Gram matrix is representable.
    gram = ms.well_conditioned(6, seed=7) @ ms.well_conditioned(6, seed=7).T
    ref = nash_bargaining(gram, tol=1e-12)
    sol = nash_bargaining((gram * scale).float())
    assert bool(sol.ok.all())
    torch.testing.assert_close(sol.alpha.double() * math.sqrt(scale), ref.alpha, rtol=1e-5, atol=0)


@pytest.mark.parametrize("path", ["small", "general"])
@pytest.mark.parametrize("scale", [1e36, 1e-36])
def test_float32_iteration_on_a_huge_or_tiny_gram(
    scale: float, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The residual's weights 1/α = ‖g‖/β are squared: unnormalised, they overflowed (a false
    # OK with residual 0 from the starting point) or vanished in a float32 iteration.
    from nashmoe.bargaining import _solver

    if path == "general":
        monkeypatch.setattr(_solver, "_use_small_path", lambda gram: False)
    g = ms.well_conditioned(6, seed=8)
    gram = g @ g.T
    ref = nash_bargaining(gram, tol=1e-12)
    sol = nash_bargaining((gram * scale).float(), compute_dtype=torch.float32)
    assert bool(sol.ok.all()) and int(sol.iterations) >= 1
    assert 0 < float(sol.residual) <= 6e-6
    torch.testing.assert_close(sol.alpha.double() * math.sqrt(scale), ref.alpha, rtol=1e-5, atol=0)
