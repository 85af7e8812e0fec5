"""Property tests for nash_bargaining / nash_direction (TorchJD style: shared asserts, seeded
matrix families, a few hypothesis-driven properties)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nashmoe.bargaining import NashSolution, NashStatus, nash_bargaining, nash_direction

from . import _matrix_samplers as ms
from ._asserts import (
    assert_non_conflicting,
    assert_non_differentiable,
    assert_permutation_equivariant,
    assert_scale_invariant,
    assert_solves,
    assert_structure,
    gram_of,
    residual,
)

SIZES = [2, 3, 5, 8, 17, 32, 64, 128]
HYPOTHESIS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # solver_path: per test
)

# Every test runs on both CPU code paths (the small-problem numpy path and the torch path).
pytestmark = pytest.mark.usefixtures("solver_path")


def solve_vectors(g: torch.Tensor, **kwargs) -> tuple[NashSolution, torch.Tensor]:
    return nash_direction(g, **kwargs)


# --- the fixed point ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(ms.FEASIBLE_FAMILIES))
@pytest.mark.parametrize("n", SIZES)
def test_solves_k_alpha_equals_inverse_alpha(family: str, n: int) -> None:
    g = ms.FEASIBLE_FAMILIES[family](n, seed=n)
    gram = gram_of(g)
    sol = nash_bargaining(gram)
    assert_structure(sol, (), n)
    assert_solves(gram, sol, rtol=1e-6)
    assert 0 <= int(sol.iterations) <= 20


@pytest.mark.parametrize("n", [4, 16, 64])
def test_tight_tolerance_reaches_rounding_level(n: int) -> None:
    gram = gram_of(ms.rank_deficient(n, seed=1))
    sol = nash_bargaining(gram, tol=1e-12)
    assert_solves(gram, sol, rtol=1e-12)


@pytest.mark.parametrize("spread", [1e-3, 1e-6])
def test_nearly_collinear_players(spread: float) -> None:
    g = ms.ill_conditioned(12, seed=3, spread=spread)
    gram = gram_of(g)
    assert float(torch.linalg.cond(gram)) > 1e3 / spread
    sol, d = nash_direction(g)
    assert_solves(gram, sol, rtol=1e-6)
    assert_non_conflicting(g, sol, d, rtol=1e-5)


@pytest.mark.parametrize("n", [2, 7, 40])
def test_orthogonal_players_get_inverse_norms(n: int) -> None:
    g, norms = ms.orthogonal(n, seed=n)
    sol = nash_bargaining(gram_of(g))
    assert bool(sol.ok.all())
    torch.testing.assert_close(sol.alpha, 1.0 / norms, rtol=1e-12, atol=0.0)
    assert int(sol.iterations) == 0  # the start 1/√diag(K) is exact


def test_single_player() -> None:
    g = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    sol, d = nash_direction(g)
    assert int(sol.status) == NashStatus.OK
    torch.testing.assert_close(sol.alpha, torch.tensor([0.2], dtype=torch.float64))
    torch.testing.assert_close(d, g[0] / 5.0)
    assert int(sol.iterations) == 0


def test_duplicated_rows_share_weight() -> None:
    g = ms.duplicated(6, seed=2)
    gram = gram_of(g)
    sol, d = nash_direction(g)
    assert_solves(gram, sol)
    torch.testing.assert_close(sol.alpha[0], sol.alpha[-1], rtol=1e-9, atol=0.0)
    assert_non_conflicting(g, sol, d, rtol=1e-5)


# --- invariances -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(ms.FEASIBLE_FAMILIES))
def test_direction_has_norm_sqrt_n_and_gains_inverse_alpha(family: str) -> None:
    g = ms.FEASIBLE_FAMILIES[family](9, seed=5)
    sol, d = nash_direction(g, tol=1e-10)
    assert_non_conflicting(g, sol, d, rtol=1e-8)


@pytest.mark.parametrize("family", sorted(ms.FEASIBLE_FAMILIES))
def test_permutation_equivariance(family: str) -> None:
    g = ms.FEASIBLE_FAMILIES[family](10, seed=6)
    assert_permutation_equivariant(lambda x: nash_direction(x, tol=1e-11), g, seed=0, rtol=1e-7)


@pytest.mark.parametrize("c", [1e-6, 0.1, 1e4])
def test_global_scale_law(c: float) -> None:
    g = ms.well_conditioned(6, seed=7)
    scales = torch.full((6,), c, dtype=torch.float64)
    assert_scale_invariant(lambda x: nash_direction(x, tol=1e-11), g, scales, rtol=1e-8)


def test_per_player_scaling() -> None:
    g = ms.rank_deficient(12, seed=8)
    scales = 10.0 ** torch.linspace(-4, 4, 12, dtype=torch.float64)
    assert_scale_invariant(lambda x: nash_direction(x, tol=1e-11), g, scales, rtol=1e-8)


def test_scale_does_not_change_iterations() -> None:
    g = ms.well_conditioned(8, seed=9)
    a = nash_bargaining(gram_of(g))
    b = nash_bargaining(gram_of(g * 1e-5))
    assert int(a.iterations) == int(b.iterations)


def test_alpha_is_constant_for_autograd_by_default() -> None:
    g = ms.well_conditioned(5, seed=10)
    assert_non_differentiable(solve_vectors, g)
    gram = gram_of(g).requires_grad_(True)
    assert not nash_bargaining(gram).alpha.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        nash_bargaining(gram).alpha.sum().backward()


# --- batches, dtypes, warm start ---------------------------------------------------------------


def test_batch_equals_loop_with_mixed_statuses() -> None:
    problems = [
        gram_of(ms.well_conditioned(5, seed=11)),
        gram_of(ms.scaled(5, seed=12)),
        gram_of(torch.cat((ms.opposing(5, seed=1), ms.well_conditioned(3, p=5, seed=2)))),
        torch.zeros(5, 5, dtype=torch.float64),
        gram_of(ms.rank_deficient(5, seed=13)),
        gram_of(ms.ill_conditioned(5, seed=14)),
    ]
    batch = torch.stack(problems).reshape(2, 3, 5, 5)
    sol = nash_bargaining(batch)
    assert_structure(sol, (2, 3), 5)
    flat = [nash_bargaining(p) for p in problems]
    assert sol.status.reshape(-1).tolist() == [int(s.status) for s in flat]
    assert sol.iterations.reshape(-1).tolist() == [int(s.iterations) for s in flat]
    torch.testing.assert_close(
        sol.alpha.reshape(6, 5), torch.stack([s.alpha for s in flat]), rtol=1e-12, atol=0.0
    )
    torch.testing.assert_close(
        sol.residual.reshape(6), torch.stack([s.residual for s in flat]), equal_nan=True
    )
    assert sol.status_counts() == {"OK": 4, "NOT_CONVERGED": 0, "DEGENERATE": 1, "INFEASIBLE": 1}


def test_empty_batch() -> None:
    sol = nash_bargaining(torch.zeros(0, 3, 3, dtype=torch.float64))
    assert sol.alpha.shape == (0, 3)
    assert sol.status.shape == (0,)


@pytest.mark.parametrize("n", [3, 16])
def test_float32_input(n: int) -> None:
    g = ms.well_conditioned(n, seed=15).float()
    gram = g @ g.T
    sol = nash_bargaining(gram)
    assert sol.alpha.dtype == torch.float32 and sol.residual.dtype == torch.float32
    assert_solves(gram, sol, rtol=1e-6)  # float64 iteration on the float32 matrix
    fast = nash_bargaining(gram, compute_dtype=torch.float32)
    assert bool(fast.ok.all())
    assert float(residual(gram, fast.alpha)) <= 1e-4
    torch.testing.assert_close(fast.alpha, sol.alpha, rtol=1e-4, atol=0.0)


def test_bfloat16_input() -> None:
    g = ms.well_conditioned(6, seed=16).bfloat16()
    gram = g @ g.T
    gram = 0.5 * (gram + gram.T)
    sol = nash_bargaining(gram)
    assert sol.alpha.dtype == torch.float32
    exact = nash_bargaining(gram.double())  # the same bf16-rounded numbers, in float64
    torch.testing.assert_close(sol.alpha, exact.alpha.float())
    assert_solves(gram.double(), sol, rtol=1e-6)
    _, d = nash_direction(g)  # vectors in bf16: the Gram matrix is formed in float32
    assert d.dtype == torch.bfloat16 and bool(torch.isfinite(d.float()).all())


def test_warm_start_from_the_solution_and_scale_free() -> None:
    gram = gram_of(ms.rank_deficient(16, seed=17))
    cold = nash_bargaining(gram, tol=1e-10)
    warm = nash_bargaining(gram, tol=1e-10, init=cold.alpha)
    assert int(warm.iterations) <= 1 < int(cold.iterations)
    scaled_init = nash_bargaining(gram, tol=1e-10, init=1e3 * cold.alpha)
    torch.testing.assert_close(scaled_init.alpha, warm.alpha, rtol=1e-10, atol=0.0)
    noise = 1 + 1e-3 * torch.randn(16, generator=torch.Generator().manual_seed(0), dtype=gram.dtype)
    near = nash_bargaining(gram, tol=1e-10, init=cold.alpha * noise)
    assert int(near.iterations) < int(cold.iterations)
    torch.testing.assert_close(near.alpha, cold.alpha, rtol=1e-8, atol=0.0)


def test_warm_start_broadcasts_over_the_batch() -> None:
    grams = torch.stack([gram_of(ms.well_conditioned(4, seed=s)) for s in range(3)])
    first = nash_bargaining(grams[0])
    sol = nash_bargaining(grams, init=first.alpha)
    assert bool(sol.ok.all())
    assert int(sol.iterations[0]) <= 1


@pytest.mark.parametrize("family", ["well_conditioned", "rank_deficient", "scaled"])
def test_max_iter_is_the_budget(family: str) -> None:
    gram = gram_of(ms.FEASIBLE_FAMILIES[family](32, seed=18))
    sols = [nash_bargaining(gram, max_iter=k, tol=1e-14) for k in (1, 2, 12)]
    assert [int(s.iterations) for s in sols[:2]] == [1, 2]
    # A feasible problem cut short is NOT_CONVERGED (certified feasible), with its iterate.
    for sol in sols[:2]:
        assert int(sol.status) == NashStatus.NOT_CONVERGED
        assert bool((sol.alpha > 0).all()) and float(sol.residual) < 1.0
        assert bool((gram @ sol.alpha > 0).all())  # the iterate improves every player
    assert float(sols[0].residual) > float(sols[1].residual) > float(sols[2].residual)
    assert float(sols[2].residual) < 1e-12


# --- failure modes -----------------------------------------------------------------------------


def _assert_fallback(sol: NashSolution, status: NashStatus, n: int) -> None:
    assert bool((sol.status == status).all()), sol.status_counts()
    torch.testing.assert_close(sol.alpha, torch.full_like(sol.alpha, 1.0 / n))


@pytest.mark.parametrize(
    "g",
    [ms.opposing(5), ms.three_at_120(), ms.three_at_120(scale=1e-3), ms.partially_opposing(6)],
    ids=["opposing", "120deg", "120deg-small", "partially-opposing"],
)
@pytest.mark.parametrize("cdtype", [torch.float64, torch.float32])
def test_infeasible_is_reported_with_uniform_alpha(g: torch.Tensor, cdtype: torch.dtype) -> None:
    sol, d = nash_direction(g, compute_dtype=cdtype)
    _assert_fallback(sol, NashStatus.INFEASIBLE, g.shape[0])
    assert bool(torch.isfinite(sol.residual).all()) and float(sol.residual) > 0.1
    assert bool(torch.isfinite(d).all())


def test_opposing_is_detected_within_a_few_iterations() -> None:
    sol = nash_bargaining(gram_of(ms.opposing(4, seed=3)))
    assert int(sol.status) == NashStatus.INFEASIBLE
    assert int(sol.iterations) <= 5


@pytest.mark.parametrize("kind", ["zero", "zero-row", "tiny"])
def test_degenerate_is_reported_with_uniform_alpha(kind: str) -> None:
    if kind == "zero":
        gram = torch.zeros(4, 4, dtype=torch.float64)
    elif kind == "zero-row":
        gram = gram_of(ms.with_zero_row(4, seed=19))
    else:
        gram = 1e-320 * torch.eye(4, dtype=torch.float64)
    sol = nash_bargaining(gram)
    _assert_fallback(sol, NashStatus.DEGENERATE, 4)
    assert bool(torch.isnan(sol.residual).all())
    assert int(sol.iterations) == 0


def test_tiny_but_nonzero_players_are_fine() -> None:
    g = ms.well_conditioned(4, seed=20) * 1e-150
    sol = nash_bargaining(gram_of(g))
    assert bool(sol.ok.all())
    torch.testing.assert_close(
        sol.alpha * 1e-150, nash_bargaining(gram_of(g * 1e150)).alpha, rtol=1e-9, atol=0.0
    )


@pytest.mark.parametrize("cdtype", [torch.float64, torch.float32])
def test_near_infeasible_never_nan(cdtype: torch.dtype) -> None:
    for eps in 10.0 ** -torch.arange(1, 13, dtype=torch.float64):
        g = ms.near_opposing(float(eps))
        sol, d = nash_direction(g, compute_dtype=cdtype)
        assert bool(torch.isfinite(sol.alpha).all()) and bool((sol.alpha > 0).all())
        assert bool(torch.isfinite(d).all()) and bool(torch.isfinite(sol.residual).all())
        status = NashStatus(int(sol.status))
        if cdtype == torch.float64:
            assert status in (NashStatus.OK, NashStatus.INFEASIBLE)
            if status == NashStatus.OK:
                assert float(residual(gram_of(g), sol.alpha)) <= 1e-6
        # Clear margins are solved; margins below the working precision are infeasible. In
        # float32 the rounding floor of α_i(Kα)_i (about eps·α‖g‖²) can leave a solvable problem
        # NOT_CONVERGED, with a usable iterate.
        if eps >= (1e-4 if cdtype == torch.float64 else 1e-1):
            assert status == NashStatus.OK, float(eps)
        if eps <= (1e-7 if cdtype == torch.float64 else 1e-4):
            assert status == NashStatus.INFEASIBLE, float(eps)
        if status == NashStatus.NOT_CONVERGED:
            assert float(sol.residual) < 1e-3


@pytest.mark.parametrize(
    "g", [ms.opposing(5), ms.three_at_120(), ms.partially_opposing(6)], ids=["2", "3", "6"]
)
@pytest.mark.parametrize("max_iter", [1, 2, 3])
def test_infeasible_is_never_certified_on_a_small_budget(g: torch.Tensor, max_iter: int) -> None:
    sol = nash_bargaining(gram_of(g), max_iter=max_iter)
    assert int(sol.status) == NashStatus.INFEASIBLE


def test_validate_false_reports_nonfinite_as_degenerate() -> None:
    gram = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    gram[1, 0, 1] = math.nan
    sol = nash_bargaining(gram, validate=False)
    assert sol.status.tolist() == [NashStatus.OK, NashStatus.DEGENERATE]
    assert bool(torch.isfinite(sol.alpha).all())


# --- implicit differentiation ------------------------------------------------------------------


def test_implicit_gradient_gradcheck() -> None:
    g = torch.stack([ms.well_conditioned(3, p=4, seed=21), ms.scaled(3, seed=22)[:, :4]])
    g.requires_grad_(True)

    def alpha_of(x: torch.Tensor) -> torch.Tensor:
        return nash_bargaining(x @ x.mT, differentiable=True, tol=1e-13, max_iter=50).alpha

    assert torch.autograd.gradcheck(alpha_of, (g,), eps=1e-6, atol=1e-6, rtol=1e-5)

    def direction_of(x: torch.Tensor) -> torch.Tensor:
        return nash_direction(x, differentiable=True, tol=1e-13, max_iter=50)[1]

    assert torch.autograd.gradcheck(
        direction_of, (g,), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True
    )


def test_implicit_gradient_is_zero_for_failed_problems() -> None:
    good = gram_of(ms.well_conditioned(2, seed=23))
    bad = gram_of(ms.opposing(2, seed=24))
    gram = torch.stack([good, bad]).requires_grad_(True)
    sol = nash_bargaining(gram, differentiable=True)
    assert sol.alpha.requires_grad
    sol.alpha.sum().backward()
    assert float(gram.grad[0].abs().max()) > 0
    assert float(gram.grad[1].abs().max()) == 0.0


def test_implicit_gradient_matches_the_formula() -> None:
    # Directional derivative of α along a symmetric dK: (K + diag(1/α²)) dα = −dK α.
    gram = gram_of(ms.well_conditioned(5, seed=25)).requires_grad_(True)
    sol = nash_bargaining(gram, differentiable=True, tol=1e-13)
    a = sol.alpha.detach()
    v = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (grad_k,) = torch.autograd.grad(sol.alpha, gram, v)
    dk = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dk = dk + dk.T
    da = torch.linalg.solve(gram.detach() + torch.diag(1 / a**2), -dk @ a)
    torch.testing.assert_close((grad_k * dk).sum(), v @ da)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gram", "match"),
    [
        (torch.zeros(3, 4, dtype=torch.float64), "square"),
        (torch.zeros(3, dtype=torch.float64), "square"),
        (torch.zeros(0, 0, dtype=torch.float64), "N >= 1"),
        (torch.eye(3, dtype=torch.int64), "floating-point"),
        (torch.eye(3, dtype=torch.complex128), "real floating-point"),
        (torch.tensor([[1.0, math.nan], [math.nan, 1.0]]), "NaN or inf"),
        (torch.tensor([[1.0, 0.0], [0.0, math.inf]]), "NaN or inf"),
        (torch.tensor([[1.0, 0.5], [0.2, 1.0]]), "not symmetric"),
        (torch.tensor([[-1.0, 0.0], [0.0, 1.0]]), "negative diagonal"),
        ("not a matrix", "gram must be a tensor"),
    ],
    ids=[
        "not-square",
        "1-d",
        "n-zero",
        "integer",
        "complex",
        "nan",
        "inf",
        "asymmetric",
        "negative-diagonal",
        "string",
    ],
)
def test_bad_gram_raises(gram, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        nash_bargaining(gram)


def test_symmetry_tolerance() -> None:
    gram = gram_of(ms.well_conditioned(4, seed=26))
    nudged = gram.clone()
    nudged[0, 1] *= 1 + 1e-8  # rounding-level asymmetry is accepted (and symmetrised)
    assert bool(nash_bargaining(nudged).ok)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"init": torch.ones(4, dtype=torch.float64)}, "init must have shape"),
        ({"init": torch.ones(5, 3, dtype=torch.float64)}, "init must have shape"),
        ({"init": torch.zeros(3, dtype=torch.float64)}, "strictly positive"),
        ({"init": -torch.ones(3, dtype=torch.float64)}, "strictly positive"),
        ({"init": torch.tensor([1.0, math.nan, 1.0])}, "finite"),
        ({"init": torch.ones(3, dtype=torch.int64)}, "floating-point"),
        ({"init": [1.0, 1.0, 1.0]}, "floating-point"),
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"max_iter": True}, "max_iter"),
        ({"tol": 0.0}, "tol"),
        ({"tol": math.nan}, "tol"),
        ({"ridge": -1.0}, "ridge"),
        ({"compute_dtype": torch.float16}, "compute_dtype"),
    ],
)
def test_bad_options_raise(kwargs: dict, match: str) -> None:
    gram = gram_of(ms.well_conditioned(3, seed=27)).expand(2, 3, 3)
    with pytest.raises(ValueError, match=match):
        nash_bargaining(gram, **kwargs)


@pytest.mark.parametrize(
    "vectors",
    [[[1.0, 2.0]], torch.ones(2, 3, dtype=torch.int64), torch.ones(3)],
    ids=["list", "integer", "1-d"],
)
def test_bad_vectors_raise(vectors) -> None:
    with pytest.raises(ValueError, match="vectors"):
        nash_direction(vectors)


# --- hypothesis --------------------------------------------------------------------------------


@st.composite
def feasible_vectors(draw) -> torch.Tensor:
    n = draw(st.integers(1, 12))
    p = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    margin = draw(st.sampled_from([0.05, 0.3, 1.0]))
    log_scale = draw(st.floats(-6, 6))
    g = ms.well_conditioned(n, p=p, seed=seed, margin=margin)
    return g * 10.0**log_scale


@HYPOTHESIS
@given(feasible_vectors())
def test_property_feasible_problems_are_solved(g: torch.Tensor) -> None:
    sol, d = nash_direction(g, tol=1e-10)
    assert_structure(sol, (), g.shape[0])
    assert_solves(gram_of(g), sol, rtol=1e-10)
    assert_non_conflicting(g, sol, d, rtol=1e-7)


@HYPOTHESIS
@given(
    st.integers(1, 10),
    st.integers(1, 10),
    st.integers(0, 2**31 - 1),
    st.sampled_from([torch.float64, torch.float32]),
)
def test_property_any_matrix_gets_a_finite_answer(n: int, p: int, seed: int, cdtype) -> None:
    # Unshifted Gaussian rows: feasible or not, depending on the draw.
    g = torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sol, d = nash_direction(g, compute_dtype=cdtype)
    assert_structure(sol, (), n)
    assert bool(torch.isfinite(d).all())
    status = NashStatus(int(sol.status))
    if status == NashStatus.OK:
        gains = g @ d
        assert bool((gains > 0).all())  # an improving direction really exists
    else:
        assert status == NashStatus.INFEASIBLE
        torch.testing.assert_close(sol.alpha, torch.full_like(sol.alpha, 1.0 / n))
