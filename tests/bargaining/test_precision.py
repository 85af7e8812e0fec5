"""The resolution rule: no feasibility below what the Gram matrix's precision resolves.

Domain vectors τ_i = E_i − mean(E) sum to zero, so no direction improves every player and the
bargaining is infeasible. In float32 the rounding residue of Σ τ_i used to make the Gram matrix
look barely feasible: status OK with α of a few hundred (a direction of norm √N made of rounding
noise). The solver must report INFEASIBLE there, on both paths, while problems whose margin the
dtype does resolve keep their answer.
"""

from __future__ import annotations

import pytest
import torch

from nashmoe.bargaining import NashStatus, _solver, nash_bargaining, nash_direction

from ._asserts import residual


def _mean_centred(n: int, p: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """τ_i = E_i − mean_j E_j, computed in ``dtype`` (Σ_i τ_i = 0 up to its rounding)."""
    e = torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return e - e.mean(0)


def _tilted(n: int, margin: float, *, p: int = 2000, seed: int = 0) -> torch.Tensor:
    """Feasible float64 players: mean-centred τ_i plus margin · ‖τ_i‖ · u, u ⟂ every τ_i, so u
    improves every player by margin (relative); max β · Σ β grows like 1/margin²."""
    gen = torch.Generator().manual_seed(seed)
    tau = _mean_centred(n, p, seed, torch.float64)
    u = torch.randn(p, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(tau.T)
    u = u - q @ (q.T @ u)
    return tau + margin * tau.norm(dim=1, keepdim=True) * (u / u.norm())


def _beta_product(gram: torch.Tensor, alpha: torch.Tensor) -> float:
    beta = alpha.double() * gram.double().diagonal(dim1=-2, dim2=-1).sqrt()
    return float((beta.amax(-1) * beta.sum(-1)).max())


def _assert_infeasible(sol, n: int) -> None:
    assert bool((sol.status == NashStatus.INFEASIBLE).all()), sol.status_counts()
    torch.testing.assert_close(sol.alpha, torch.full_like(sol.alpha, 1.0 / n))


# (N, P, seed): the first five came back OK with α of 128 to 256 before the rule (one CPU
# thread or several; the Gram product's rounding depends on the BLAS kernel), the last NOT_CONVERGED
# with a negative α on the small path.
CASES = [(3, 1000, 0), (4, 1000, 0), (4, 1000, 2), (8, 1000, 0), (16, 50_000, 1), (8, 50_000, 2)]


@pytest.mark.parametrize(("n", "p", "seed"), CASES)
def test_float32_mean_centred_is_infeasible(solver_path, n: int, p: int, seed: int) -> None:
    tau = _mean_centred(n, p, seed)
    gram = tau @ tau.T
    _assert_infeasible(nash_bargaining(gram), n)
    _assert_infeasible(nash_bargaining(gram, compute_dtype=torch.float32), n)
    _assert_infeasible(nash_bargaining(gram, init=torch.ones(n)), n)  # as a warm-started layer
    sol, d = nash_direction(tau)
    _assert_infeasible(sol, n)
    # The uniform fallback's direction is Σ τ_i / N: the rounding residue, not a step of norm √N.
    assert float(d.norm()) < 1e-2


@pytest.mark.parametrize("max_iter", [1, 2, 3, 50])
def test_float32_mean_centred_is_never_certified(solver_path, max_iter: int) -> None:
    """Neither converged nor certified as NOT_CONVERGED, whatever the budget."""
    for n in (3, 4, 8):
        tau = torch.stack([_mean_centred(n, 1000, seed) for seed in range(4)])
        _assert_infeasible(nash_bargaining(tau @ tau.mT, max_iter=max_iter), n)


def test_float32_mean_centred_batch_same_on_both_paths() -> None:
    tau = torch.stack([_mean_centred(6, 3000, seed) for seed in range(12)])
    gram = tau @ tau.mT
    options = {"max_iter": 20, "tol": 1e-6, "init": None, "ridge": 1e-9, "cdtype": torch.float64}
    small = _solver._solve_small(gram, **options)
    general = _solver._solve(gram, **options)
    assert small[3].tolist() == general[3].tolist() == [NashStatus.INFEASIBLE] * 12
    assert small[2].tolist() == general[2].tolist()
    torch.testing.assert_close(small[0], general[0])


def test_large_n_general_path_is_infeasible() -> None:
    tau = _mean_centred(80, 4000, 5)  # N > 64: the torch path
    _assert_infeasible(nash_bargaining(tau @ tau.T), 80)


@pytest.mark.parametrize(("n", "p", "seed"), CASES[:4])
def test_float64_mean_centred_stays_infeasible(solver_path, n: int, p: int, seed: int) -> None:
    tau = _mean_centred(n, p, seed, torch.float64)
    _assert_infeasible(nash_bargaining(tau @ tau.T), n)
    _assert_infeasible(nash_direction(tau)[0], n)


def test_bfloat16_vectors_are_judged_at_bfloat16_precision() -> None:
    """nash_direction forms the Gram matrix in float32, but bf16 vectors only resolve margins at
    bf16 precision: their mean-centred residue must not pass for feasibility."""
    tau = _mean_centred(4, 4000, 3).bfloat16()
    _assert_infeasible(nash_direction(tau)[0], 4)
    g = _tilted(4, 0.3).bfloat16()  # a clear margin is still solved
    sol, d = nash_direction(g)
    assert bool(sol.ok.all()) and d.dtype == torch.bfloat16


@pytest.mark.parametrize("n", [2, 4, 8, 16])
@pytest.mark.parametrize("margin", [0.1, 0.01, 3e-3])
def test_float32_margins_above_the_threshold_are_solved(solver_path, n: int, margin: float):
    """Near-infeasible float32 problems that the dtype resolves stay OK with the float64 answer."""
    g = _tilted(n, margin)
    exact = nash_bargaining(g @ g.T, tol=1e-10)
    assert bool(exact.ok.all())
    g32 = g.float()
    gram32 = g32 @ g32.T
    # Within the resolution (max β · Σ β < 1/gram_error), by a factor of at least 4.
    assert _beta_product(gram32, exact.alpha) < 0.25 / _solver._gram_error(torch.float32)
    for sol in (nash_bargaining(gram32), nash_direction(g32)[0]):
        assert bool(sol.ok.all()), sol.status_counts()
        torch.testing.assert_close(sol.alpha.double(), exact.alpha, rtol=3e-3, atol=0.0)


@pytest.mark.parametrize("n", [2, 8])
def test_float32_margins_below_the_threshold_are_infeasible(solver_path, n: int) -> None:
    """The same family, 10× beyond the float32 resolution: INFEASIBLE in float32, OK in float64
    (whose resolution is 1e8 times finer)."""
    g = _tilted(n, 3e-4)
    exact = nash_bargaining(g @ g.T, tol=1e-8)
    assert bool(exact.ok.all())
    assert float(residual(g @ g.T, exact.alpha)) <= 1e-8
    assert _beta_product(g @ g.T, exact.alpha) > 10 / _solver._gram_error(torch.float32)
    g32 = g.float()
    _assert_infeasible(nash_bargaining(g32 @ g32.T), n)
    _assert_infeasible(nash_direction(g32)[0], n)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_float64_near_infeasible_is_unaffected(solver_path, n: int) -> None:
    """Float64 Gram matrices resolve margins down to where the ridge cap binds: a margin of 1e-4
    (max β · Σ β about 1e8, far below 1/gram_error = 3e14) is still solved."""
    g = _tilted(n, 1e-4)
    sol = nash_bargaining(g @ g.T, tol=1e-8)  # (1e-10 is below the float64 residual floor)
    assert bool(sol.ok.all()), sol.status_counts()
    assert float(residual(g @ g.T, sol.alpha)) <= 1e-8
    assert _beta_product(g @ g.T, sol.alpha) * _solver._gram_error(torch.float64) < 1e-5


def test_gram_error_per_dtype() -> None:
    eps = {d: torch.finfo(d).eps for d in (torch.float64, torch.float32, torch.bfloat16)}
    assert _solver._gram_error(torch.float64) == 16 * eps[torch.float64]
    assert _solver._gram_error(torch.float32) == 16 * eps[torch.float32]
    assert _solver._gram_error(torch.bfloat16) == eps[torch.bfloat16]
    assert _solver._gram_error(torch.float16) == torch.finfo(torch.float16).eps


@pytest.mark.parametrize("n", [3, 4, 8])
@pytest.mark.parametrize("delta", [1e-6, 1e-8, 1e-10])
def test_indefinite_gram_paths_agree_and_alpha_stays_positive(n: int, delta: float) -> None:
    """A Gram matrix that rounding made indefinite (here K − δ·√K_ii√K_jj on mean-centred
    players: an eigenvalue −Nδ of K̂ along 1) can make the Newton matrix indefinite; its
    negative 'decrement' must neither take a full step (α < 0 on the small path, which solves by
    LU) nor certify feasibility. Both paths agree."""
    tau = _mean_centred(n, 200, 0, torch.float64)
    gram = tau @ tau.T
    norms = gram.diagonal().sqrt()
    gram = gram - delta * torch.outer(norms, norms)
    options = {"max_iter": 20, "tol": 1e-6, "init": None, "ridge": 1e-9, "cdtype": torch.float64}
    small = _solver._solve_small(gram, **options)
    general = _solver._solve(gram, **options)
    assert small[3].tolist() == general[3].tolist() == NashStatus.INFEASIBLE
    assert small[2].tolist() == general[2].tolist()
    assert bool((small[0] > 0).all()) and bool((general[0] > 0).all())
