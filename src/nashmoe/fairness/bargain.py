"""Stage 1 of fairness-aware meta-learning: Nash bargaining over the players' hypergradients.

Zeng et al., "Fairness-Aware Meta-Learning via Nash Bargaining", NeurIPS 2024, arXiv 2406.07029;
the solution has the Nash-MTL form (Navon et al., ICML 2022, arXiv 2202.01017): Δ* = Σ_i α_i g_i
with α > 0 solving (G Gᵀ) α = 1/α, so ⟨g_i, Δ*⟩ = 1/α_i > 0 for every player and ‖Δ*‖² = n.
The Newton solver is :func:`nashmoe.bargaining.nash_bargaining`; this module adds the failure
detection of fairness.md, section 4, in this order:

1. a zero or non-finite player hypergradient → ``"degenerate"``;
2. a certificate from the min-norm point of the convex hull of {g_i} (the MGDA sub-problem,
   Frank–Wolfe with exact line search on the simplex): a norm ≤ ``certificate_tol · max_i ‖g_i‖``
   means no direction improves every player → ``"infeasible"``. Frank–Wolfe stops early with the
   opposite certificate as soon as its iterate d = Σ λ_i g_i improves every player;
3. the solver: ``"not_converged"`` when the relative residual stays above ``tol`` after
   ``max_iter`` or the iterates diverge (the solver's own ``INFEASIBLE`` label is reported as
   ``"not_converged"`` too: it also fires on feasible problems stopped early, and infeasibility
   is the certificate's call);
4. the post-check min_i ⟨g_i, Σ_j α_j g_j⟩ > 0, else ``"post_check_failed"``.

Only ``"ok"`` results may be used; the caller falls back otherwise (fairness.md, sections 5–6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nashmoe.bargaining import NashStatus, nash_bargaining

__all__ = ["BARGAIN_STATUSES", "BargainResult", "MinNormPoint", "min_norm_point", "nash_bargain"]

BARGAIN_STATUSES = ("ok", "not_converged", "degenerate", "infeasible", "post_check_failed")


@dataclass(frozen=True)
class BargainResult:
    """Outcome of one bargaining problem.

    Attributes:
        alpha: weights ``[n]`` (float64, a constant for autograd); uniform 1/n unless ``ok``.
        status: one of :data:`BARGAIN_STATUSES`.
        iterations: Newton iterations (0 when the solver did not run).
        residual: relative residual ‖Kα − 1/α‖ / ‖1/α‖ (NaN when the solver did not run).
        reason: why it failed (None when ``ok``).
        min_utility: min_i ⟨g_i, Σ_j α_j g_j⟩ of the returned α (NaN when not computed).
    """

    alpha: Tensor
    status: str
    iterations: int
    residual: float
    reason: str | None = None
    min_utility: float = math.nan

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class MinNormPoint:
    """Frank–Wolfe result for min ‖Σ λ_i g_i‖ over the simplex.

    ``verdict`` is ``"feasible"`` (d = Σ λ_i g_i improves every player: a direction exists),
    ``"infeasible"`` (‖d‖ ≤ tol · max ‖g_i‖) or ``"undecided"`` after ``max_iter`` steps.
    """

    weights: np.ndarray
    norm: float
    verdict: str
    iterations: int


def min_norm_point(gram: np.ndarray, *, tol: float = 1e-6, max_iter: int = 64) -> MinNormPoint:
    """Min-norm point of the convex hull of the players, from their Gram matrix ``[n, n]``.

    Frank–Wolfe with exact line search from the uniform point (the MGDA sub-problem of Sener and
    Koltun, NeurIPS 2018). By Gordan's alternative, the min-norm point is 0 iff no direction
    improves every player.
    """
    k = np.asarray(gram, dtype=np.float64)
    n = k.shape[0]
    scale = math.sqrt(max(float(np.max(np.diag(k))), 0.0))
    lam = np.full(n, 1.0 / n)
    kl = k @ lam
    for it in range(max_iter + 1):
        q = float(lam @ kl)
        norm = math.sqrt(max(q, 0.0))
        if float(kl.min()) > 0:
            return MinNormPoint(lam, norm, "feasible", it)
        if norm <= tol * scale:
            return MinNormPoint(lam, norm, "infeasible", it)
        if it == max_iter:
            break
        i = int(np.argmin(kl))
        # minimise over γ ∈ [0, 1] the quadratic (1−γ)² q + 2γ(1−γ) (Kλ)_i + γ² K_ii
        a = q - 2 * kl[i] + k[i, i]
        gamma = 1.0 if a <= 0 else min(max((q - kl[i]) / a, 0.0), 1.0)
        lam = (1 - gamma) * lam
        lam[i] += gamma
        kl = (1 - gamma) * kl + gamma * k[:, i]
    return MinNormPoint(lam, norm, "undecided", max_iter)


def _failure(n: int, status: str, reason: str, *, iterations: int = 0, residual: float = math.nan):
    alpha = torch.full((n,), 1.0 / n, dtype=torch.float64)
    return BargainResult(alpha, status, iterations, residual, reason)


def nash_bargain(
    player_hypergradients: Tensor,
    *,
    max_iter: int = 20,
    tol: float = 1e-6,
    certificate_tol: float = 1e-6,
    certificate_iter: int = 64,
    zero_tol: float = 1e-12,
) -> BargainResult:
    """Nash bargaining among ``n`` players' hypergradients ``G [n, B]`` (fairness.md, section 4).

    Args:
        player_hypergradients: ``[n, B]``, one row g_i per player.
        max_iter, tol: Newton iterations and relative-residual tolerance of the solver.
        certificate_tol: relative min-norm threshold of the infeasibility certificate.
        certificate_iter: Frank–Wolfe steps at most for the certificate.
        zero_tol: a player with ‖g_i‖ ≤ zero_tol · max_j ‖g_j‖ counts as zero.

    Returns:
        A :class:`BargainResult`; α is computed under ``no_grad`` in float64.
    """
    g = player_hypergradients
    if not isinstance(g, Tensor) or g.ndim != 2 or not g.is_floating_point():
        raise ValueError("player_hypergradients must be a floating-point tensor of shape [n, B]")
    n = g.shape[0]
    if n < 1:
        raise ValueError("need at least one player")
    with torch.no_grad():
        g = g.detach().double()
        if not bool(torch.isfinite(g).all()):
            bad = torch.nonzero(~torch.isfinite(g).all(1)).flatten().tolist()
            return _failure(n, "degenerate", f"non-finite hypergradient for player(s) {bad}")
        norms = g.norm(dim=1)
        biggest = float(norms.max())
        zero = norms <= zero_tol * biggest if biggest > 0 else torch.ones_like(norms, dtype=bool)
        if bool(zero.any()):
            bad = torch.nonzero(zero).flatten().tolist()
            return _failure(n, "degenerate", f"zero hypergradient for player(s) {bad}")
        gram = g @ g.T
        gram = 0.5 * (gram + gram.T)
        mnp = min_norm_point(gram.cpu().numpy(), tol=certificate_tol, max_iter=certificate_iter)
        if mnp.verdict == "infeasible":
            return _failure(
                n,
                "infeasible",
                f"min-norm point of the players' hull has relative norm {mnp.norm / biggest:.3g}"
                f" <= {certificate_tol:g}: no direction improves every player",
            )
        sol = nash_bargaining(gram, max_iter=max_iter, tol=tol, validate=False)
        status = NashStatus(int(sol.status))
        iterations = int(sol.iterations)
        residual = float(sol.residual)
        if status == NashStatus.NOT_CONVERGED:
            return _failure(
                n,
                "not_converged",
                f"relative residual {residual:.3g} > tol {tol:g} after {iterations} iterations",
                iterations=iterations,
                residual=residual,
            )
        if status == NashStatus.DEGENERATE:
            reason = "solver reports a degenerate Gram matrix"
            return _failure(n, "degenerate", reason, iterations=iterations)
        if status == NashStatus.INFEASIBLE:
            # The certificate did not find the problem infeasible; the solver labels INFEASIBLE
            # both a divergence and an unconverged iterate that does not yet improve every
            # player (even on feasible problems stopped at max_iter). Per the spec's order,
            # infeasibility is the certificate's call: this is a solver failure.
            return _failure(
                n,
                "not_converged",
                f"solver stopped without a Nash point (it reports INFEASIBLE: diverging or "
                f"non-improving iterate after {iterations} iterations; relative residual "
                f"{residual:.3g}), while the min-norm certificate found no infeasibility",
                iterations=iterations,
                residual=residual,
            )
        alpha = sol.alpha.double()
        utilities = gram @ alpha  # ⟨g_i, Σ_j α_j g_j⟩
        min_u = float(utilities.min())
        if not (min_u > 0 and bool(torch.isfinite(alpha).all())):
            out = _failure(
                n,
                "post_check_failed",
                f"min_i <g_i, sum_j alpha_j g_j> = {min_u:.3g} is not positive",
                iterations=iterations,
                residual=residual,
            )
            return BargainResult(**{**out.__dict__, "min_utility": min_u})
        return BargainResult(alpha.cpu(), "ok", iterations, residual, None, min_u)
