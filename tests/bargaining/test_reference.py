"""Agreement with the cvxpy/Clarabel reference (skipped when cvxpy is absent)."""

from __future__ import annotations

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nashmoe.bargaining import NashStatus, nash_bargaining
from nashmoe.bargaining.reference import reference_nash_bargaining

from . import _matrix_samplers as ms
from ._asserts import gram_of, residual

# cvxpy and its solvers may warn (inaccurate solutions, deprecations in their dependencies):
# expected third-party noise, filtered here only.
CVXPY_WARNINGS = [
    pytest.mark.filterwarnings("ignore::UserWarning:cvxpy.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:cvxpy.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:cvxpy.*"),
]


@pytest.fixture
def cvxpy():
    return pytest.importorskip("cvxpy")


def _with_cvxpy_warnings_filtered(fn):
    for mark in CVXPY_WARNINGS:
        fn = mark(fn)
    return fn


@_with_cvxpy_warnings_filtered
@pytest.mark.parametrize("family", ["well_conditioned", "rank_deficient", "scaled"])
@pytest.mark.parametrize("n", [2, 5, 16, 48])
def test_agrees_with_cvxpy(cvxpy, family: str, n: int) -> None:
    gram = torch.stack([gram_of(ms.FEASIBLE_FAMILIES[family](n, seed=s)) for s in (1, 2)])
    ours = nash_bargaining(gram, tol=1e-12)
    ref = reference_nash_bargaining(gram)
    assert bool(ours.ok.all())
    assert float(residual(gram, ref).max()) <= 1e-6  # the reference is itself a solution
    torch.testing.assert_close(ours.alpha, ref, rtol=1e-6, atol=0.0)


@_with_cvxpy_warnings_filtered
def test_agrees_with_cvxpy_on_duplicated_and_orthogonal(cvxpy) -> None:
    g_dup = ms.duplicated(5, seed=3)
    g_orth, norms = ms.orthogonal(5, seed=3)
    for g in (g_dup, g_orth):
        gram = gram_of(g)
        torch.testing.assert_close(
            nash_bargaining(gram, tol=1e-12).alpha,
            reference_nash_bargaining(gram),
            rtol=1e-6,
            atol=0.0,
        )
    ref_orth = reference_nash_bargaining(gram_of(g_orth))
    torch.testing.assert_close(ref_orth, 1 / norms, rtol=1e-6, atol=0.0)


@_with_cvxpy_warnings_filtered
@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 8), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_statuses_agree_with_cvxpy(n: int, p: int, seed: int) -> None:
    pytest.importorskip("cvxpy")
    # Unshifted Gaussian rows: feasible or not, depending on the draw.
    g = torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gram = gram_of(g)
    ours = nash_bargaining(gram, tol=1e-12)
    if int(ours.status) == NashStatus.OK:
        torch.testing.assert_close(ours.alpha, reference_nash_bargaining(gram), rtol=1e-5, atol=0)
    else:
        assert int(ours.status) == NashStatus.INFEASIBLE
        with pytest.raises(RuntimeError):
            reference_nash_bargaining(gram)


@_with_cvxpy_warnings_filtered
def test_reference_rejects_infeasible_and_degenerate(cvxpy) -> None:
    with pytest.raises(RuntimeError, match=r"residual|status"):
        reference_nash_bargaining(gram_of(ms.opposing(4)))
    with pytest.raises(ValueError, match="diagonal"):
        reference_nash_bargaining(gram_of(ms.with_zero_row(3)))
    with pytest.raises(ValueError, match=r"\[\.\.\., N, N\]"):
        reference_nash_bargaining(torch.ones(2, 3, dtype=torch.float64))


def test_missing_cvxpy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # makes `import cvxpy` fail
    with pytest.raises(ImportError, match=r"nashmoe\[ref\]"):
        reference_nash_bargaining(torch.eye(2, dtype=torch.float64))
