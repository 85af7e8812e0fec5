"""The small-problem CPU path (numpy) against the general torch path, and which path runs.

Both paths run the same iteration; they differ in the linear solve (LU in LAPACK through numpy vs
Cholesky in torch) and in rounding, so statuses and iteration counts must agree exactly and α to
rounding level, on random, ill-conditioned, degenerate, infeasible and near-infeasible batches.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nashmoe.bargaining import NashStatus, _solver, nash_bargaining

from . import _matrix_samplers as ms
from ._asserts import gram_of, residual

RTOL = {torch.float64: 1e-9, torch.float32: 2e-3}


def _both(gram: torch.Tensor, **kwargs):
    options = {"max_iter": 20, "tol": 1e-6, "init": None, "ridge": 1e-9, "cdtype": torch.float64}
    options.update(kwargs)
    if options["cdtype"] == torch.float32:
        options["tol"] = max(options["tol"], 50 * torch.finfo(torch.float32).eps)
    return _solver._solve_small(gram, **options), _solver._solve(gram, **options)


def _assert_same(gram: torch.Tensor, **kwargs) -> None:
    (a_s, r_s, i_s, s_s), (a_g, r_g, i_g, s_g) = _both(gram, **kwargs)
    cdtype = kwargs.get("cdtype", torch.float64)
    assert s_s.tolist() == s_g.tolist()
    if cdtype == torch.float64:
        assert i_s.tolist() == i_g.tolist()
    else:  # a residual at the float32 floor (6e-6) may cross tol one iteration apart
        assert int((i_s - i_g).abs().max()) <= 1
    assert a_s.dtype == a_g.dtype and r_s.dtype == r_g.dtype
    assert i_s.dtype == s_s.dtype == torch.int64
    rtol = RTOL[cdtype]
    torch.testing.assert_close(a_s, a_g, rtol=rtol, atol=0.0)
    # Residuals below tol are at rounding level (amplified by 1/margin near infeasibility), so
    # they are compared on an absolute floor of tol; converged ones are checked independently.
    tol = max(kwargs.get("tol", 1e-6), 50 * torch.finfo(cdtype).eps)
    torch.testing.assert_close(
        r_s, r_g, rtol=1e-6 if cdtype == torch.float64 else 1e-3, atol=tol, equal_nan=True
    )
    ok = s_s == NashStatus.OK
    if cdtype == torch.float64 and bool(ok.any()):  # float32 α rounds (near-infeasible: by 1e-2)
        assert float(residual(gram[ok], a_s[ok]).max()) <= 1.01 * tol


def _random_batch(n: int, seed: int) -> torch.Tensor:
    """A batch of 24 problems of every kind: feasible families, degenerate, infeasible."""
    problems = []
    for j, family in enumerate(sorted(ms.FEASIBLE_FAMILIES)):
        for k in range(3):
            problems.append(gram_of(ms.FEASIBLE_FAMILIES[family](n, seed=seed + 10 * j + k)))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(6):  # unshifted Gaussian rows: feasible or not
        g = torch.randn(n, max(1, n // 2), generator=gen, dtype=torch.float64)
        problems.append(gram_of(g))
    problems.append(gram_of(ms.with_zero_row(n, seed=seed)))
    problems.append(torch.zeros(n, n, dtype=torch.float64))
    if n >= 2:
        problems.append(gram_of(ms.partially_opposing(n, seed=seed)))
        problems.append(gram_of(ms.ill_conditioned(n, seed=seed, spread=1e-6)))
    return torch.stack(problems)


@pytest.mark.parametrize("cdtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("n", [2, 3, 8, 17, 64])
def test_paths_agree_on_mixed_batches(n: int, cdtype: torch.dtype) -> None:
    gram = _random_batch(n, seed=n)
    _assert_same(gram, cdtype=cdtype)
    _assert_same(gram, cdtype=cdtype, tol=1e-12)


@pytest.mark.parametrize("max_iter", [1, 2, 3])
def test_paths_agree_on_small_budgets(max_iter: int) -> None:
    _assert_same(_random_batch(8, seed=1), max_iter=max_iter, tol=1e-14)


def test_paths_agree_with_a_warm_start() -> None:
    gram = _random_batch(6, seed=2)
    init = torch.rand(gram.shape[:-1], generator=torch.Generator().manual_seed(0)) + 0.1
    _assert_same(gram, init=init.double())
    _assert_same(gram, init=init[0].float())  # broadcast, other dtype


def test_paths_agree_near_infeasibility() -> None:
    for cdtype in (torch.float64, torch.float32):
        eps = 10.0 ** -torch.arange(1, 13, dtype=torch.float64)
        gram = torch.stack([gram_of(ms.near_opposing(float(e))) for e in eps])
        _assert_same(gram, cdtype=cdtype)


def test_paths_agree_on_infeasible_and_degenerate() -> None:
    infeasible = [ms.opposing(5), ms.three_at_120(), ms.three_at_120(scale=1e-3)]
    gram = torch.stack([gram_of(g[:2]) for g in infeasible] + [torch.zeros(2, 2).double()])
    _assert_same(gram)
    gram[-1, 0, 1] = float("nan")  # validate=False: non-finite is DEGENERATE on both paths
    _assert_same(gram)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(1, 6),
    st.integers(0, 2**31 - 1),
    st.sampled_from([0.0, 0.3]),
    st.floats(-8, 8),
)
def test_property_paths_agree(n: int, p: int, b: int, seed: int, shift: float, log_scale: float):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(b, n, p, generator=gen, dtype=torch.float64)
    u = torch.randn(p, generator=gen, dtype=torch.float64)
    g = g + shift * g.norm(dim=-1, keepdim=True) * u / u.norm()
    scales = 10.0 ** (log_scale * torch.rand(b, n, 1, generator=gen, dtype=torch.float64))
    gram = gram_of(g * scales)
    # Player norms spread over up to 16 decades: iterates can differ by rounding, and once seen
    # (under load, in a full-suite run) the number of iterations to tol differed (5 vs 13) for
    # one problem. What must agree here is the outcome: statuses, and solutions to tolerance.
    (a_s, r_s, _, s_s), (a_g, r_g, _, s_g) = _both(gram)
    assert s_s.tolist() == s_g.tolist()
    ok = s_s == NashStatus.OK
    if bool(ok.any()):
        assert float(r_s[ok].max()) <= 1e-6 and float(r_g[ok].max()) <= 1e-6
        assert float(residual(gram[ok], a_s[ok]).max()) <= 1.01e-6
        assert float(residual(gram[ok], a_g[ok]).max()) <= 1.01e-6


# --- which path runs ---------------------------------------------------------------------------


def _forbid(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} should not run")

    monkeypatch.setattr(_solver, name, fail)


def test_small_cpu_problems_take_the_small_path(monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid(monkeypatch, "_solve")
    sol = nash_bargaining(gram_of(ms.well_conditioned(8, seed=3)).expand(24, 8, 8))
    assert bool(sol.ok.all())


def test_large_problems_take_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid(monkeypatch, "_solve_small")
    assert bool(nash_bargaining(gram_of(ms.well_conditioned(_solver._SMALL_MAX_N + 1))).ok)
    big_batch = gram_of(ms.well_conditioned(8, seed=4)).expand(_solver._SMALL_MAX_ENTRIES, 8, 8)
    assert not _solver._use_small_path(big_batch)


def test_tracing_takes_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid(monkeypatch, "_solve_small")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert bool(nash_bargaining(gram_of(ms.well_conditioned(8, seed=5))).ok)


def test_singular_lapack_falls_back_to_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(np.linalg, "solve", singular)
    gram = _random_batch(5, seed=6)
    sol = nash_bargaining(gram)
    monkeypatch.undo()
    ref = _solver._solve(gram, max_iter=20, tol=1e-6, init=None, ridge=1e-9, cdtype=torch.float64)
    assert sol.status.tolist() == ref[3].tolist()
    torch.testing.assert_close(sol.alpha, ref[0], rtol=0.0, atol=0.0)


def test_under_torch_compile() -> None:
    # The call the MoE layers make, traced by dynamo (eager backend: tracing, not codegen).
    gram = gram_of(ms.well_conditioned(6, seed=7))

    def solve(k: torch.Tensor) -> torch.Tensor:
        return nash_bargaining(k, max_iter=20, tol=1e-6, init=None, validate=False).alpha

    torch._dynamo.reset()
    compiled = torch.compile(solve, backend="eager")
    torch.testing.assert_close(compiled(gram), solve(gram), rtol=1e-9, atol=0.0)
