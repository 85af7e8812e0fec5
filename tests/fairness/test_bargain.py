"""The stage-1 bargaining step: solver properties and the failure detection order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nashmoe.fairness.bargain import min_norm_point, nash_bargain


def _direction(g: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return alpha.to(g.dtype) @ g


def _random_feasible(n: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen, dtype=torch.float64) + 1.5


def test_one_player() -> None:
    g = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    r = nash_bargain(g)
    assert r.status == "ok" and r.reason is None
    assert torch.allclose(r.alpha, torch.tensor([1 / 5.0], dtype=torch.float64))


def test_orthogonal_players() -> None:
    g = torch.diag(torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))
    r = nash_bargain(g)
    assert r.ok
    assert torch.allclose(r.alpha, 1 / g.norm(dim=1), rtol=1e-8)


def test_two_identical_players() -> None:
    row = torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64)
    r = nash_bargain(torch.stack([row, row]))
    assert r.ok
    expected = 1 / (math.sqrt(2) * row.norm())
    assert torch.allclose(r.alpha, torch.full((2,), float(expected), dtype=torch.float64))


def test_rank_deficient_but_feasible_reaches_tol() -> None:
    g = _random_feasible(6, 3, seed=0)  # 6 players in R^3
    assert torch.linalg.matrix_rank(g) == 3
    r = nash_bargain(g, tol=1e-8, max_iter=50)
    assert r.ok and r.residual < 1e-8
    utilities = g @ _direction(g, r.alpha)
    assert torch.allclose(utilities, 1 / r.alpha, rtol=1e-6)


def test_opposite_players_are_infeasible_by_certificate() -> None:
    g1 = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    r = nash_bargain(torch.stack([g1, -g1]))
    assert r.status == "infeasible" and not r.ok
    assert "min-norm point" in r.reason
    assert r.iterations == 0  # the solver never ran: the certificate decided
    assert torch.allclose(r.alpha, torch.full((2,), 0.5, dtype=torch.float64))


def test_zero_player_is_degenerate() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    r = nash_bargain(g)
    assert r.status == "degenerate" and "player(s) [1]" in r.reason


def test_non_finite_player_is_degenerate_before_anything_else() -> None:
    g = torch.tensor([[1.0, float("nan")], [-1.0, 0.0]], dtype=torch.float64)
    r = nash_bargain(g)
    assert r.status == "degenerate" and "non-finite" in r.reason


def test_degenerate_is_checked_before_the_certificate() -> None:
    # Also infeasible (g2 = -g1), but the zero player is reported first.
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert nash_bargain(g).status == "degenerate"


def test_not_converged_is_reported() -> None:
    # Nearly opposite players: feasible (the direction (0, 1) improves all three), but a few
    # Newton steps cannot converge. The solver labels this INFEASIBLE; infeasibility is the
    # certificate's call, so the bargaining step reports "not_converged".
    g = torch.tensor([[1.0, 1e-3], [-1.0, 1e-3], [0.3, 1.0]], dtype=torch.float64)
    for max_iter in (1, 3):
        r = nash_bargain(g, max_iter=max_iter, tol=1e-12)
        assert r.status == "not_converged", r.reason
        assert r.iterations == max_iter and r.residual > 1e-12
    converged = nash_bargain(g, max_iter=30, tol=1e-12)
    assert converged.ok and bool((g @ _direction(g, converged.alpha) > 0).all())


def test_tight_tolerance_not_converged() -> None:
    g = _random_feasible(5, 7, seed=3)
    r = nash_bargain(g, max_iter=1, tol=1e-15)
    assert r.status == "not_converged" and "residual" in r.reason


def test_permutation_permutes_alpha() -> None:
    g = _random_feasible(5, 12, seed=1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a, b = nash_bargain(g), nash_bargain(g[perm])
    assert a.ok and b.ok
    assert torch.allclose(b.alpha, a.alpha[perm], rtol=1e-7)


def test_per_player_scaling_leaves_direction_unchanged() -> None:
    g = _random_feasible(4, 9, seed=2)
    c = torch.tensor([0.01, 1.0, 30.0, 2.5], dtype=torch.float64)
    a, b = nash_bargain(g), nash_bargain(c[:, None] * g)
    assert a.ok and b.ok
    assert torch.allclose(b.alpha, a.alpha / c, rtol=1e-6)
    assert torch.allclose(_direction(c[:, None] * g, b.alpha), _direction(g, a.alpha), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_direction_norm_squared_is_n_and_it_conflicts_with_no_player(n: int) -> None:
    g = _random_feasible(n, 20, seed=n)
    r = nash_bargain(g)
    assert r.ok
    d = _direction(g, r.alpha)
    assert d.pow(2).sum().item() == pytest.approx(n, rel=1e-6)
    assert bool((g @ d > 0).all())
    assert r.min_utility > 0


def test_float32_input() -> None:
    g = _random_feasible(3, 8, seed=5).float()
    r = nash_bargain(g)
    assert r.ok and r.alpha.dtype == torch.float64
    assert bool((g.double() @ _direction(g.double(), r.alpha) > 0).all())


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[n, B\]"):
        nash_bargain(torch.ones(3))
    with pytest.raises(ValueError, match="at least one player"):
        nash_bargain(torch.ones(0, 3))


def test_min_norm_point_certificates() -> None:
    feasible = min_norm_point(np.array([[1.0, 0.2], [0.2, 1.0]]))
    assert feasible.verdict == "feasible"
    g = np.array([[1.0, 0.0], [-1.0, 1e-9]])
    infeasible = min_norm_point(g @ g.T)
    assert infeasible.verdict == "infeasible"
    # Three vectors at 120 degrees: the hull contains 0 (found by Frank-Wolfe iterations).
    angles = np.array([0.0, 2.2, 4.1])
    h = np.stack([np.cos(angles), np.sin(angles)], 1)
    res = min_norm_point(h @ h.T, max_iter=500, tol=1e-3)
    assert res.verdict == "infeasible" and res.iterations > 0
    # A feasible problem whose uniform point does not certify it: needs iterations.
    v = np.array([[1.0, 0.05], [-1.0, 0.05], [1.0, 0.05]])
    res = min_norm_point(v @ v.T)
    assert res.verdict == "feasible" and res.iterations > 0
    assert bool(((v @ v.T) @ res.weights > 0).all())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_agrees_with_cvxpy_reference() -> None:
    cp = pytest.importorskip("cvxpy")
    for seed in range(3):
        g = _random_feasible(4, 6, seed=10 + seed).numpy()
        k = g @ g.T
        alpha = cp.Variable(4, pos=True)
        # minimise ½ αᵀKα − Σ log α (the convex form of Kα = 1/α)
        prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(alpha, k) - cp.sum(cp.log(alpha))))
        prob.solve(solver=cp.CLARABEL)
        r = nash_bargain(torch.from_numpy(g))
        assert r.ok
        np.testing.assert_allclose(r.alpha.numpy(), alpha.value, rtol=1e-4)
