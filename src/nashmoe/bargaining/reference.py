"""Reference Nash bargaining solver written in cvxpy, for tests and benchmarks only.

It solves the same strictly convex problem as :func:`nashmoe.bargaining.nash_bargaining`,

    minimise ½ αᵀKα − Σ_i log α_i   over α > 0,

one problem at a time with a generic conic solver (Clarabel, open source, interior point): the
quadratic is written as a sum of squares ½‖Fα‖² with K = FᵀF (from an eigendecomposition, so
rank-deficient K is fine) and each log as an exponential cone. Slow, but independent of our Newton
code, which is what a cross-check needs. Needs the ``ref`` extra: ``pip install nashmoe[ref]``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nashmoe._optional import require

__all__ = ["reference_nash_bargaining"]

# Clarabel's defaults stop at a duality gap of about 1e-8, which leaves α wrong by about 1e-5
# (the error in α goes like the square root of the gap); these reach residuals near 1e-9.
_DEFAULT_OPTIONS = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "max_iter": 400}


def _import_cvxpy() -> Any:
    return require(
        "cvxpy",
        extra="ref",
        purpose="the reference Nash bargaining solver",
        package="cvxpy and Clarabel",
    )


def _residual(k: np.ndarray, alpha: np.ndarray) -> float:
    inv = 1.0 / alpha
    return float(np.linalg.norm(k @ alpha - inv) / np.linalg.norm(inv))


def _solve_one(
    cp: Any, k: np.ndarray, solver: str, options: dict[str, Any], max_residual: float
) -> np.ndarray:
    n = k.shape[0]
    k = 0.5 * (k + k.T)
    # Equilibrate (K̂ = D K D, D = diag(1/√K_ii)) so the conic solver sees unit-scale players; the
    # solution maps back as α = D β.
    d = 1.0 / np.sqrt(np.diag(k))
    k_hat = k * d[:, None] * d[None, :]
    w, v = np.linalg.eigh(k_hat)
    keep = w > 1e-14 * max(float(w.max()), 1.0)
    f = np.sqrt(w[keep])[:, None] * v[:, keep].T  # K̂ ≈ FᵀF
    beta = cp.Variable(n)
    objective = cp.Minimize(0.5 * cp.sum_squares(f @ beta) - cp.sum(cp.log(beta)))
    problem = cp.Problem(objective)
    problem.solve(solver=solver, **options)
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or beta.value is None:
        raise RuntimeError(f"cvxpy/{solver} did not solve the problem: status {problem.status!r}")
    alpha = np.asarray(beta.value, dtype=np.float64) * d
    # Conic solvers can report "optimal" on an unbounded (infeasible) problem with a huge α:
    # trust the answer only if it satisfies K α = 1/α.
    res = _residual(k, alpha) if bool(np.all(alpha > 0)) else float("inf")
    if not res <= max_residual:
        raise RuntimeError(
            f"cvxpy/{solver} returned status {problem.status!r} but its α has relative residual "
            f"{res:.3g} > {max_residual:g} (is the problem infeasible?)"
        )
    return alpha


def reference_nash_bargaining(
    gram: Tensor,
    *,
    solver: str = "CLARABEL",
    solver_options: dict[str, Any] | None = None,
    max_residual: float = 1e-6,
) -> Tensor:
    """Solve ``K α = 1/α`` for each Gram matrix in ``gram [..., N, N]`` with cvxpy.

    Args:
        gram: symmetric positive semi-definite matrices ``[..., N, N]`` whose problems have a
            solution (some direction improves every player) and no zero player.
        solver: the cvxpy solver name; it must support exponential cones (Clarabel, SCS, ECOS).
        solver_options: keyword arguments for ``Problem.solve`` (default: tight Clarabel
            tolerances).
        max_residual: accept the conic solver's answer only if its relative residual
            ``‖Kα − 1/α‖ / ‖1/α‖`` is at most this.

    Returns:
        α ``[..., N]`` in float64 on the CPU.

    Raises:
        ImportError: cvxpy is not installed (extra ``ref``).
        ValueError: ``gram`` is not a batch of square matrices, or has a zero diagonal entry.
        RuntimeError: the conic solver did not report an optimal solution, or its answer does
            not satisfy K α = 1/α to ``max_residual`` (e.g. the problem is infeasible, so the
            objective is unbounded below).
    """
    cp = _import_cvxpy()
    k = torch.as_tensor(gram).detach().to("cpu", torch.float64)
    if k.ndim < 2 or k.shape[-1] != k.shape[-2] or k.shape[-1] < 1:
        raise ValueError(f"gram must have shape [..., N, N] with N >= 1, got {tuple(k.shape)}")
    if bool((k.diagonal(dim1=-2, dim2=-1) <= 0).any()):
        raise ValueError("gram has a zero (or negative) diagonal entry: no Nash point exists")
    if solver_options is None:
        solver_options = _DEFAULT_OPTIONS if solver.upper() == "CLARABEL" else {}
    flat = k.reshape(-1, k.shape[-1], k.shape[-1]).numpy()
    with warnings.catch_warnings():
        # Clarabel may note "Solution may be inaccurate" for the hardest problems; the status
        # check above is what decides.
        warnings.simplefilter("ignore", UserWarning)
        out = [
            _solve_one(cp, flat[i], solver, dict(solver_options), max_residual)
            for i in range(flat.shape[0])
        ]
    return torch.from_numpy(np.stack(out)).reshape(k.shape[:-1])
