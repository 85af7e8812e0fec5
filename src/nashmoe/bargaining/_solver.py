"""Batched Nash bargaining solver.

The Nash bargaining solution (NBS) among N players with utilities u_i(Δ) = ⟨g_i, Δ⟩, disagreement
point 0 and Δ in a ball is Δ* = Σ_i α_i g_i with α > 0 solving ``K α = 1/α`` (elementwise), where
K = G Gᵀ is the Gram matrix of the players' vectors (Navon et al., "Multi-Task Learning as a
Bargaining Game", ICML 2022, arXiv 2202.01017; used for expert merging by Nguyen et al., "Expert
Merging in Sparse Mixture of Experts with Nash Bargaining", ICLR 2026, arXiv 2510.16138).

We solve it as the strictly convex problem

    minimise f(α) = ½ αᵀ K α − Σ_i log α_i   over α > 0,

whose stationarity condition is exactly K α = 1/α, by Newton's method with a fraction-to-boundary
step and an exact-enough line search over a fixed grid of step lengths (evaluated in parallel, so
no data-dependent control flow is needed on CUDA). f has a minimiser iff some direction improves
every player (Gordan's alternative); linear independence of the g_i is never needed.

Numerics: the problem is first equilibrated by the players' norms, K̂ = D K D with
D = diag(1/√K_ii), so that β = α ⊙ √diag(K) solves K̂ β = 1/β with unit-diagonal K̂; the Newton
system is solved in the scaled form (B K̂ B + I) y = −B ∇f, B = diag(β), d = B y, whose matrix has
eigenvalues ≥ 1 and is factorised by Cholesky. This makes the iteration invariant to the scale of
every player, and the start β = 1 is α₀ = 1/√diag(K), exact for orthogonal players (a few cheap
fixed-point sweeps from it give a better start when they lower f).

Two implementations of the same iteration: on the CPU, problems with N <= 64 (and batches of
up to 2^18 Gram entries) run it in numpy (:func:`_solve_small`: single-threaded, about 0.5 µs per
operation instead of 2–5 µs of torch dispatch, and one LAPACK LU per problem instead of torch's
batched Cholesky, which opens an OpenMP parallel region even for 8×8 matrices and, on a machine
shared with other multi-threaded processes, waits up to a scheduler tick for a descheduled worker
thread). Larger problems, CUDA tensors and calls traced by ``torch.compile`` take the torch path
(:func:`_solve`; on CUDA without host synchronisation in the loop). Statuses and iteration counts
agree between the two; α agrees to rounding.

Failure modes are reported, never hidden (:class:`NashStatus`): a zero player is DEGENERATE; a
problem whose iterates run off to infinity, or that no iterate certifies as feasible within
``max_iter`` (certificates: a Newton decrement below 1, or an iterate whose direction improves
every player), is INFEASIBLE; both get uniform weights. A certified problem that runs out of
iterations is NOT_CONVERGED and keeps its last iterate. Nothing is certified below the precision
of the Gram matrix as given (the resolution rule, :func:`_resolution`): a Nash point, or a
not-converged witness, must improve every player by more than the errors of the Gram entries
can move that improvement, else the problem is INFEASIBLE. This is what keeps float32 domain
vectors that sum to zero (experts minus their mean) from getting a direction made of rounding
noise.
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["NashSolution", "NashStatus", "nash_bargaining", "nash_direction"]

# Keep iterates strictly inside α > 0: never go further than this fraction of the way to 0.
_FRACTION_TO_BOUNDARY = 0.99
# Step lengths tried along each Newton direction (all at once, the best f wins); the last is the
# longest.
_STEP_GRID = (1.0, 0.5, 0.25, 0.0625, 2.0, 8.0, 64.0)
# β = α ⊙ ‖g‖ above min(_RIDGE_CAP/√ridge, _EPS_CAP/√eps) means numerically infeasible: the
# ridge then dominates the Newton matrix along the growing direction (the longest step, 64,
# compensates up to ridge·β² = 64), or the margin is at the rounding level of K̂ (a pair of
# opposite players whose cosine is off by one ulp has β = 1/√eps).
_RIDGE_CAP = 8.0
_EPS_CAP = 0.25
# Relative error of a Gram entry, as ulps of the dtype it was accumulated in (float32 at least):
# |δK_ij| <= _GRAM_ULPS · eps · √(K_ii K_jj). One ulp is the rounding of the entry itself (or of
# the vectors it came from); the rest covers the accumulation over the vectors' length P, which
# the solver does not know: blocked BLAS kernels measure 1–50 ulps per entry for P from 1e3 to
# 8e6 (a naive loop can do far worse, but then the Gram matrix is visibly indefinite and the
# problem fails anyway). Entries stored in half precision are taken at one ulp of their dtype
# (they are rounded float32 sums). See _gram_error and the resolution rule in nash_bargaining.
_GRAM_ULPS = 16
# Newton decrement below which a non-converged problem counts as certified feasible (< 1 in
# exact arithmetic; a margin for rounding). The other certificate is an improving iterate.
_CERTIFIED_DECREMENT = 0.9
# Newton decrement below which the full step is taken without a line search (CPU).
_QUADRATIC_REGION = 0.25
# Fixed-point sweeps β ← √(β / K̂β) tried as a start (kept only when they lower f).
_FIXED_POINT_SWEEPS = 4
# Relative asymmetry of the Gram matrix accepted by input validation.
_SYMMETRY_RTOL = 1e-4
# CPU problems up to this many players, and batches up to this many Gram entries, take the small
# path (:func:`_solve_small`): the same iteration in numpy, single-threaded, with one LAPACK call
# per problem. Torch's batched LAPACK calls (cholesky_ex, linalg.solve) open an OpenMP parallel
# region even for 8×8 matrices, which waits for a descheduled worker thread on a busy machine
# (about 10 ms per call beside two other torch processes), and each tiny torch operation costs
# 2–5 µs of dispatch against 0.5–2 µs in numpy.
_SMALL_MAX_N = 64
_SMALL_MAX_ENTRIES = 1 << 18


class NashStatus(enum.IntEnum):
    """Outcome of one bargaining problem, stored as integer codes in :attr:`NashSolution.status`."""

    OK = 0
    """Converged: the relative residual is at most ``tol``."""
    NOT_CONVERGED = 1
    """A Nash point exists but ``max_iter`` iterations did not reach ``tol``. Existence is
    certified, either by the last iterate itself (K α > 0 beyond the error of the Gram entries:
    it improves every player) or by a Newton decrement below 1 (which proves that f has a
    minimiser), and the iterate is within the resolution rule. α is the last iterate:
    positive and finite, with the reported residual."""
    DEGENERATE = 2
    """Some player's vector is (numerically) zero, e.g. experts upcycled from one dense FFN, or
    the input was not finite: no Nash point exists. α is uniform 1/N, the residual NaN."""
    INFEASIBLE = 3
    """No direction improves every player (e.g. g₂ = −g₁, or three vectors at 120°): f is
    unbounded below and the iterates run off to infinity. Reported when α_i‖g_i‖ exceeds what the
    working precision (or the ridge) resolves, when the improvement 1/α_i of some player is
    within the error of the Gram entries (see :func:`nash_bargaining`, statuses; e.g. float32
    vectors that sum to zero), or when ``max_iter`` iterations could not certify that a Nash
    point exists. α is uniform 1/N."""


@dataclass(frozen=True)
class NashSolution:
    """Result of :func:`nash_bargaining` for a batch of problems with leading shape ``[...]``.

    Attributes:
        alpha: weights ``[..., N]``; positive and finite; uniform 1/N where status is
            ``DEGENERATE`` or ``INFEASIBLE``.
        residual: relative residual ``‖Kα − 1/α‖ / ‖1/α‖`` of the returned α, ``[...]``
            (NaN where the status is ``DEGENERATE``).
        iterations: Newton iterations spent on each problem, ``[...]`` (int64).
        status: :class:`NashStatus` codes, ``[...]`` (int64).
    """

    alpha: Tensor
    residual: Tensor
    iterations: Tensor
    status: Tensor

    @property
    def ok(self) -> Tensor:
        """Boolean mask ``[...]`` of the problems that converged."""
        return self.status == NashStatus.OK

    def status_counts(self) -> dict[str, int]:
        """Number of problems per status name (synchronises with the device)."""
        counts = torch.bincount(self.status.reshape(-1).cpu(), minlength=len(NashStatus))
        return {s.name: int(counts[s.value]) for s in NashStatus}


def _as_gram(gram: Tensor) -> Tensor:
    if not isinstance(gram, Tensor):
        try:
            gram = torch.as_tensor(gram)
        except Exception as exc:
            raise ValueError(f"gram must be a tensor, got {type(gram).__name__}") from exc
    return gram


def _validate(gram: Tensor, init: Tensor | None, max_iter: int, tol: float, ridge: float) -> None:
    if not gram.is_floating_point() or gram.is_complex():
        raise ValueError(f"gram must be a real floating-point tensor, got dtype {gram.dtype}")
    if gram.ndim < 2 or gram.shape[-1] != gram.shape[-2]:
        raise ValueError(f"gram must be square with shape [..., N, N], got {tuple(gram.shape)}")
    if gram.shape[-1] < 1:
        raise ValueError("gram must describe at least one player (N >= 1), got N = 0")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be positive and finite, got {tol!r}")
    if not (0 <= ridge < 1):
        raise ValueError(f"ridge must be in [0, 1), got {ridge!r}")
    if init is not None:
        if not isinstance(init, Tensor) or not init.is_floating_point():
            raise ValueError("init must be a floating-point tensor of shape [..., N]")
        batch = gram.shape[:-1]
        try:
            ok_shape = torch.broadcast_shapes(init.shape, batch) == batch
        except RuntimeError:
            ok_shape = False
        if init.ndim < 1 or not ok_shape:
            raise ValueError(
                f"init must have shape [..., N] broadcastable to {tuple(batch)}, "
                f"got {tuple(init.shape)}"
            )
    if gram.numel() == 0:
        return
    g = gram if gram.dtype in (torch.float32, torch.float64) else gram.float()
    if _use_small_path(g):
        bad, asym, scale = _value_checks_small(g, init)
    else:
        # All value checks in one device round trip; the messages are worked out on failure only.
        scale = torch.maximum(g.amax(dim=(-1, -2)), -g.amin(dim=(-1, -2)))
        asym = torch.sub(g, g.mT).abs_().amax(dim=(-1, -2))
        flags = [
            ~torch.isfinite(scale).all(),  # NaN or inf anywhere makes the max non-finite
            (asym > _SYMMETRY_RTOL * scale).any(),
            (g.diagonal(dim1=-2, dim2=-1) < 0).any(),
        ]
        if init is not None and init.numel() > 0:
            flags.append(~(torch.isfinite(init) & (init > 0)).all().to(gram.device))
        bad = torch.stack(flags).tolist()
    if bad[0]:
        raise ValueError("gram contains NaN or inf entries")
    if bad[1]:
        worst = float((asym / scale.clamp_min(torch.finfo(g.dtype).tiny)).max())
        raise ValueError(
            f"gram is not symmetric: max |K - K^T| / max |K| = {worst:.3g} "
            f"(tolerance {_SYMMETRY_RTOL:g})"
        )
    if bad[2]:
        raise ValueError("gram has a negative diagonal entry: it is not a Gram matrix")
    if len(bad) > 3 and bad[3]:
        raise ValueError("init must be finite and strictly positive")


def _value_checks_small(g: Tensor, init: Tensor | None) -> tuple[list[bool], Tensor, Tensor]:
    """The value checks of :func:`_validate` in numpy (small CPU inputs: no torch dispatches)."""
    a = g.detach().numpy()
    with np.errstate(invalid="ignore"):
        scale = np.maximum(a.max((-1, -2)), -a.min((-1, -2)))
        asym = np.abs(a - a.swapaxes(-1, -2)).max((-1, -2))
        bad = [
            not bool(np.isfinite(scale).all()),
            bool((asym > _SYMMETRY_RTOL * scale).any()),
            bool((np.diagonal(a, axis1=-2, axis2=-1) < 0).any()),
        ]
    if init is not None and init.numel() > 0:
        i = init.detach().to(device="cpu", dtype=torch.float64).numpy()
        bad.append(not bool((np.isfinite(i) & (i > 0)).all()))
    return bad, torch.from_numpy(np.asarray(asym)), torch.from_numpy(np.asarray(scale))


def _compute_dtype(dtype: torch.dtype, requested: torch.dtype | None) -> torch.dtype:
    if requested is not None:
        if requested not in (torch.float32, torch.float64):
            raise ValueError(f"compute_dtype must be float32 or float64, got {requested}")
        return requested
    return torch.float64


def _gram_error(dtype: torch.dtype) -> float:
    """Relative error bound of the entries of a Gram matrix given in ``dtype`` (see _GRAM_ULPS):
    ``max(eps(dtype), _GRAM_ULPS · eps(accumulation dtype))``, the accumulation dtype being
    ``dtype`` or float32, whichever is wider."""
    eps = torch.finfo(dtype).eps
    accumulation = torch.finfo(torch.promote_types(dtype, torch.float32)).eps
    return max(eps, _GRAM_ULPS * accumulation)


@functools.lru_cache(maxsize=16)
def _step_grid(dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(_STEP_GRID, dtype=dtype, device=device)


def _start(k_hat: Tensor, beta: Tensor, *, sweeps: int) -> Tensor:
    """The starting point [B, N, 1] for Newton's method.

    β₀ (ones, or the warm start) or, if f is lower there, the result of a few cheap fixed-point
    sweeps β ← √(β / K̂β) from it (one bmm each; exact for orthogonal players, and they typically
    save one or two Newton iterations), moved to the best point on its ray: f(cβ) is minimised
    at c = √(N / βᵀK̂β), where f = N/2 − Σ log cβ. So the candidate with the lower
    ½ N log(βᵀK̂β) − Σ log β wins. (βᵀK̂β = 0 means Ĝᵀβ = 0 with β > 0: a Gordan certificate of
    infeasibility; the start then lands beyond the divergence cap at once.)
    """
    n = beta.shape[1]
    tiny = torch.finfo(beta.dtype).tiny
    if sweeps > 0:
        sweep = beta
        for _ in range(sweeps):
            k_sweep = torch.bmm(k_hat, sweep)
            sweep = torch.where(k_sweep > 0, (sweep / k_sweep).sqrt(), sweep)
        both = torch.cat((beta, sweep), 2)  # [B, N, 2]
        quad = (both * torch.bmm(k_hat, both)).sum(1, keepdim=True)  # [B, 1, 2]
        score = (0.5 * n) * quad.clamp_min(tiny).log() - both.log().sum(1, keepdim=True)
        better = score[..., 1:] < score[..., :1]  # [B, 1, 1]; NaN (overflow) compares False
        beta = torch.where(better, sweep, beta)
        quad = torch.where(better, quad[..., 1:], quad[..., :1])
    else:
        quad = torch.bmm(beta.mT, torch.bmm(k_hat, beta))
    return beta * (n / quad.clamp_min(tiny)).sqrt()


def _solve(
    gram: Tensor,
    *,
    max_iter: int,
    tol: float,
    init: Tensor | None,
    ridge: float,
    cdtype: torch.dtype,
    gram_error: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Core Newton iteration; returns (alpha, residual, iterations, status) in ``cdtype``.

    ``gram_error`` is the relative error of the Gram entries (default: :func:`_gram_error` of
    ``gram.dtype``); solutions it cannot resolve are ``INFEASIBLE`` (see :func:`_resolution`).

    Works on the flattened batch ``[B, N, N]`` with column vectors ``[B, N, 1]`` (``bmm`` is the
    cheapest batched product). At these sizes the time goes into per-operation overhead, so each
    iteration is written with as few tensor operations as possible.
    """
    batch_shape = gram.shape[:-2]
    n = gram.shape[-1]
    device = gram.device
    finfo = torch.finfo(cdtype)
    sync_free = device.type != "cpu"
    # Large [B, N, N] temporaries are few and reused (fresh large allocations cost page faults on
    # the CPU): S = K + Kᵀ is scaled in place into K̂ = S_ij / √(S_ii S_jj).
    k = gram.reshape(-1, n, n).to(cdtype)
    k_hat = torch.add(k, k.mT)
    diag = k_hat.diagonal(dim1=-2, dim2=-1)  # 2 K_ii
    dmin, dmax = torch.aminmax(diag, dim=-1)
    # A player whose vector is zero (relative to the largest one, at rounding level) cannot be
    # improved: no Nash point exists. So are all-zero or non-finite problems.
    ok = (dmax > finfo.tiny) & (dmin > (finfo.eps**2) * dmax)
    safe_diag = torch.where(ok[:, None], diag, 2.0)[..., None]  # [B, N, 1]
    sqrt_diag = (0.5 * safe_diag).sqrt()  # ‖g_i‖
    inv_sqrt = safe_diag.rsqrt()
    k_hat.mul_(inv_sqrt).mul_(inv_sqrt.mT)
    ok = ok & torch.isfinite(k_hat.sum((1, 2)))  # |K̂_ij| <= 1 for a Gram matrix: no overflow
    eye = torch.eye(n, dtype=cdtype, device=device)
    if sync_free or not bool(ok.all()):
        torch.where(ok[:, None, None], k_hat, eye, out=k_hat)
    # The ridge regularises the Newton matrix only: the fixed point stays exactly K α = 1/α. At
    # least N·eps, so that rounding in B K̂ B (about N·eps·β²) cannot break the factorisation.
    ridge = max(ridge, n * finfo.eps)
    k_newton = torch.add(k_hat, eye, alpha=ridge)
    m = torch.empty_like(k_hat)  # Newton matrix and its Cholesky factor, reused
    chol = torch.empty_like(k_hat)
    info = torch.empty(k_hat.shape[0], dtype=torch.int32, device=device)

    if init is None:
        beta = torch.ones_like(sqrt_diag)
    else:
        init = init.to(device=device, dtype=cdtype).expand(*batch_shape, n).reshape(-1, n, 1)
        beta = torch.where(ok[:, None, None], init * sqrt_diag, 1.0)
    beta = _start(k_hat, beta, sweeps=_FIXED_POINT_SWEEPS if n > 2 or init is not None else 0)

    # β_i = α_i‖g_i‖ = ‖g_i‖/⟨g_i, Δ*⟩ grows like 1/margin (the distance from 0 to the hull of the
    # unit player vectors). Beyond this cap the margin is below what the precision of K̂, or the
    # ridge, resolves: the problem is numerically infeasible (the iterates run off to infinity).
    cap = min(_RIDGE_CAP / math.sqrt(ridge), _EPS_CAP / math.sqrt(finfo.eps))
    gram_error, resolve = _resolution(gram, gram_error, n, cap)
    rel_norm = sqrt_diag / sqrt_diag.amax(1, keepdim=True)  # ‖g_i‖ / max_j ‖g_j‖
    # (Dynamo warns about lru_cache-wrapped calls: build the grid afresh when tracing.)
    compiling = torch.compiler.is_compiling()
    grid = torch.tensor(_STEP_GRID, dtype=cdtype, device=device) if compiling else None
    grid = _step_grid(cdtype, device) if grid is None else grid
    # Per-problem scalars are kept as [B, 1, 1] so that they broadcast without reshaping.
    iterations = torch.zeros_like(beta[:, :1], dtype=torch.int64)
    # Newton decrement² and max β at the last Newton step, for the feasibility certificate.
    lam2 = torch.full_like(beta[:, :1], math.inf)
    beta_max = beta.amax(1, keepdim=True)
    it = 0
    while True:
        k_beta = torch.bmm(k_hat, beta)
        b_kb = beta * k_beta  # α_i (Kα)_i, = 1 at the solution
        rhs = 1.0 - b_kb  # −β ⊙ ∇f(β), the scaled Newton right-hand side
        # Relative residual in the original coordinates: with w = 1/α = ‖g‖/β,
        # ‖Kα − 1/α‖ / ‖1/α‖ = ‖w ⊙ (1 − α ⊙ Kα)‖ / ‖w‖, with w divided by max ‖g_i‖ (the
        # ratio is unchanged, and squares of huge or tiny norms neither overflow nor vanish).
        w = rel_norm / beta
        res = (rhs * w).norm(dim=1, keepdim=True) / w.norm(dim=1, keepdim=True)
        beta_now = beta.amax(1, keepdim=True)
        if resolve is None:
            resolved = beta_now <= cap  # [B, 1, 1]
        else:
            resolved = (beta_now <= cap) & (beta_now * beta.sum(1, keepdim=True) <= resolve)
        active = (res > tol) & resolved
        if it == max_iter or (not sync_free and not bool(active.any())):
            break
        it += 1
        beta_max = beta_now
        # Newton step d = β ⊙ y from (B K̂ B + I) y = −B ∇f, B = diag(β); eigenvalues >= 1.
        torch.bmm(beta, beta.mT, out=m).mul_(k_newton).diagonal(dim1=1, dim2=2).add_(1.0)
        torch.linalg.cholesky_ex(m, out=(chol, info))
        y = torch.cholesky_solve(rhs, chol)
        y = y.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # failed factorisation: stay
        # f(β + t d) − f(β) = t βᵀK̂d + ½ t² dᵀK̂d − Σ log(1 + t y_i), with βᵀK̂d = Σ α_i(Kα)_i y_i
        # and, from M y = rhs, dᵀK̂d = yᵀ(rhs − (1 + ridge β²) ⊙ y); the Newton decrement is
        # λ² = rhsᵀy (of the ridged system).
        d = beta * y  # the Newton direction in β
        lam2 = torch.bmm(rhs.mT, y)  # [B, 1, 1]
        quadratic = (lam2 >= 0) & (lam2 < _QUADRATIC_REGION**2)  # λ² < 0: M not PD
        if not sync_free and bool(quadratic.all()):
            # Every problem is in Newton's quadratic region (λ < 1/4): the full step keeps α > 0
            # (‖y‖∞ <= λ since M >= I) and is what the line search would pick. CPU only: on
            # CUDA the test would synchronise.
            step = active
        else:
            q = torch.addcmul(rhs - y, d, beta, value=-ridge)
            slope, curvature = torch.bmm(torch.cat((b_kb, q), -1).mT, y).split(1, dim=1)
            # Candidate steps: a grid around the Newton step t = 1, including long steps (they
            # let near-infeasible problems grow α fast, and expose infeasible ones within a few
            # iterations), capped by the fraction-to-boundary rule that keeps α > 0.
            t_max = y.amin(1, keepdim=True).clamp(max=-_FRACTION_TO_BOUNDARY / _STEP_GRID[-1])
            t = torch.minimum(grid, -_FRACTION_TO_BOUNDARY / t_max)  # [B, 1, C]
            delta_f = t * torch.addcmul(slope, curvature, t, value=0.5)
            delta_f = delta_f - torch.log1p(y * t).sum(1, keepdim=True)
            step = t.gather(-1, delta_f.argmin(-1, keepdim=True)) * active  # [B, 1, 1]
        beta = torch.addcmul(beta, d, step)
        iterations += active

    res = res[:, 0, 0]
    diverged = ok & ~resolved[:, 0, 0]
    converged = ok & ~diverged & (res <= tol)
    alpha = beta / sqrt_diag
    status = torch.zeros_like(iterations)  # NashStatus.OK
    if sync_free or not bool(converged.all()):
        status, alpha, res = _classify(
            ok=ok,
            converged=converged,
            diverged=diverged,
            alpha=alpha,
            res=res,
            beta=beta,
            b_kb=b_kb,
            lam2=lam2,
            beta_max=beta_max,
            ridge=ridge,
            gram_error=gram_error,
            k_hat=k_hat,
            sqrt_diag=sqrt_diag,
            sync_free=sync_free,
        )
    return (
        alpha.reshape(*batch_shape, n),
        res.reshape(batch_shape),
        iterations.reshape(batch_shape),
        status.reshape(batch_shape),
    )


def _classify(
    *,
    ok: Tensor,
    converged: Tensor,
    diverged: Tensor,
    alpha: Tensor,
    res: Tensor,
    beta: Tensor,
    b_kb: Tensor,
    lam2: Tensor,
    beta_max: Tensor,
    ridge: float,
    gram_error: float,
    k_hat: Tensor,
    sqrt_diag: Tensor,
    sync_free: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Statuses, α and residuals when some problem did not converge."""
    n = beta.shape[1]
    eps = torch.finfo(beta.dtype).eps
    # Feasibility certificate for the others: a Newton decrement λ < 1 at any point proves that
    # the self-concordant f has a minimiser (Nesterov, Introductory Lectures, thm. 4.1.11). The
    # ridge shrinks the computed λ² by at most 1 + ridge·max β², and rounding in B K̂ B by
    # about 1 + N·eps·max β² <= 1 + ridge·max β²; (1 + 4·ridge·max β²)² bounds both.
    slack = torch.addcmul(torch.ones_like(beta_max), beta_max, beta_max, value=4 * ridge).square()
    # (λ² < 0 only if rounding made the Newton matrix indefinite: no certificate.)
    certified = (lam2 >= 0) & (slack * lam2 < _CERTIFIED_DECREMENT**2)
    # Or a witness: the current direction Δ = Σ β_i ĝ_i improves every player, (K̂β)_i > 0 beyond
    # its error, which Gordan's alternative rules out for an infeasible problem: rounding in the
    # product (N·eps·Σ_j β_j per entry) or the error of the Gram entries themselves
    # (gram_error·Σ_j β_j), whichever is larger.
    error = max(4 * n * eps, gram_error)
    witness = (b_kb - error * beta * beta.sum(1, keepdim=True)).amin(1, keepdim=True) > 0
    certified = (certified | witness)[:, 0, 0]
    infeasible = ok & ~converged & (diverged | ~certified)
    status = torch.full_like(converged, NashStatus.NOT_CONVERGED, dtype=torch.int64)
    status.masked_fill_(converged, NashStatus.OK)
    status.masked_fill_(infeasible, NashStatus.INFEASIBLE)
    status.masked_fill_(~ok, NashStatus.DEGENERATE)
    alpha = torch.where((infeasible | ~ok)[:, None, None], 1.0 / n, alpha)
    # Residual of what is returned: for the uniform fallback ‖K1/N − N·1‖ / (N√N).
    if sync_free or bool(infeasible.any()):
        k_ones = sqrt_diag * torch.bmm(k_hat, sqrt_diag)  # K·1 = D⁻¹K̂D⁻¹1
        res_uniform = (k_ones / n - n).norm(dim=(1, 2)) / (n * math.sqrt(n))
        res = torch.where(infeasible, res_uniform, res)
    res = torch.where(ok, res, math.nan)
    return status, alpha, res


def _resolution(
    gram: Tensor, gram_error: float | None, n: int, cap: float
) -> tuple[float, float | None]:
    """The resolution rule: ``(gram_error, resolve)``.

    At a Nash point d = Σ_j α_j g_j improves player i by ⟨g_i, d⟩ = (Kα)_i = 1/α_i, while errors
    |δK_ij| <= e·√(K_ii K_jj) in the Gram entries (e = ``gram_error``, default
    :func:`_gram_error` of the dtype of ``gram`` as given) move (Kα)_i by up to
    e·‖g_i‖·Σ_j α_j‖g_j‖. The improvement is resolved only if it exceeds that, i.e. with
    β = α ⊙ ‖g‖: β_i · Σ_j β_j < 1/e for every i, i.e. max β · Σ β <= resolve = 1/e; beyond it
    the problem is numerically infeasible. ``resolve`` is None where it cannot bind before the
    cap on max β (N · cap² <= 1/e: float64 Gram matrices with the default ridge).
    """
    if gram_error is None:
        gram_error = _gram_error(gram.dtype)
    resolve = 1.0 / gram_error
    return gram_error, (resolve if n * cap * cap > resolve else None)


def _use_small_path(gram: Tensor) -> bool:
    """Whether :func:`_solve_small` handles this call (CPU, small, not being traced)."""
    n = gram.shape[-1]
    return (
        gram.device.type == "cpu"
        and n <= _SMALL_MAX_N
        and gram.numel() <= _SMALL_MAX_ENTRIES
        and not torch.compiler.is_compiling()
    )


def _solve_small(
    gram: Tensor,
    *,
    max_iter: int,
    tol: float,
    init: Tensor | None,
    ridge: float,
    cdtype: torch.dtype,
    gram_error: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_solve` for small problems on the CPU, in numpy (same iteration, same statuses).

    Vectors are ``[B, N]`` and per-problem scalars ``[B]``. The Newton system is solved by
    LAPACK's LU (``numpy.linalg.solve``: one gesv per problem, single-threaded at these sizes)
    instead of a Cholesky factorisation; its matrix has eigenvalues >= 1, so both are stable and
    agree to rounding. Should LAPACK report an exactly singular matrix (only possible with
    non-finite iterates), the call is redone by :func:`_solve`.
    """
    batch_shape = gram.shape[:-2]
    n = gram.shape[-1]
    npdt = np.float64 if cdtype == torch.float64 else np.float32
    finfo = np.finfo(npdt)
    tiny, eps = float(finfo.tiny), float(finfo.eps)
    k = gram.reshape(-1, n, n).to(cdtype).numpy()
    b = k.shape[0]
    with np.errstate(all="ignore"):
        k_hat = k + k.transpose(0, 2, 1)
        diag = np.diagonal(k_hat, axis1=1, axis2=2).copy()  # 2 K_ii
        dmin, dmax = diag.min(1), diag.max(1)
        ok = (dmax > tiny) & (dmin > (eps**2) * dmax)
        safe_diag = np.where(ok[:, None], diag, npdt(2.0))  # [B, N]
        sqrt_diag = np.sqrt(0.5 * safe_diag)  # ‖g_i‖
        inv_sqrt = 1.0 / np.sqrt(safe_diag)
        k_hat *= inv_sqrt[:, :, None]
        k_hat *= inv_sqrt[:, None, :]
        ok &= np.isfinite(k_hat.sum((1, 2)))
        eye = np.eye(n, dtype=npdt)
        if not ok.all():
            k_hat[~ok] = eye
        ridge = max(ridge, n * eps)
        k_newton = k_hat + ridge * eye

        if init is None:
            beta = np.ones((b, n), dtype=npdt)
        else:
            init_np = init.detach().to(device="cpu", dtype=cdtype).expand(*batch_shape, n)
            init_np = init_np.reshape(-1, n).numpy()
            beta = np.where(ok[:, None], init_np * sqrt_diag, npdt(1.0))
        sweeps = _FIXED_POINT_SWEEPS if n > 2 or init is not None else 0
        beta = _start_small(k_hat, beta, sweeps=sweeps, tiny=tiny)

        cap = min(_RIDGE_CAP / math.sqrt(ridge), _EPS_CAP / math.sqrt(eps))
        gram_error, resolve = _resolution(gram, gram_error, n, cap)
        rel_norm = sqrt_diag / sqrt_diag.max(1, keepdims=True) if n else sqrt_diag
        grid = np.asarray(_STEP_GRID, dtype=npdt)
        rows = np.arange(b)
        iterations = np.zeros(b, dtype=np.int64)
        lam2 = np.full(b, np.inf, dtype=npdt)
        beta_max = beta.max(1) if n else np.zeros(b, dtype=npdt)
        it = 0
        while True:
            k_beta = np.matmul(k_hat, beta[:, :, None])[:, :, 0]
            b_kb = beta * k_beta
            rhs = 1.0 - b_kb
            w = rel_norm / beta  # as in _solve
            r = rhs * w
            res = np.sqrt((r * r).sum(1) / (w * w).sum(1))
            beta_now = beta.max(1)
            if resolve is None:
                resolved = beta_now <= cap
            else:
                resolved = (beta_now <= cap) & (beta_now * beta.sum(1) <= resolve)
            active = (res > tol) & resolved
            if it == max_iter or not active.any():
                break
            it += 1
            beta_max = beta_now
            m = beta[:, :, None] * beta[:, None, :] * k_newton + eye
            try:
                y = np.linalg.solve(m, rhs[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                return _solve(
                    gram,
                    max_iter=max_iter,
                    tol=tol,
                    init=init,
                    ridge=ridge,
                    cdtype=cdtype,
                    gram_error=gram_error,
                )
            finite = np.isfinite(y)
            if not finite.all():  # overflow in a far-off problem: it stays where it is
                y = np.where(finite, y, 0.0)
            d = beta * y
            lam2 = (rhs * y).sum(1)
            if ((lam2 >= 0) & (lam2 < _QUADRATIC_REGION**2)).all():  # λ² < 0: M not PD
                step = active.astype(npdt)
            else:
                slope = (b_kb * y).sum(1)
                curvature = ((rhs - y - ridge * d * beta) * y).sum(1)
                t_max = np.minimum(y.min(1), -_FRACTION_TO_BOUNDARY / _STEP_GRID[-1])
                t = np.minimum(grid, (-_FRACTION_TO_BOUNDARY / t_max)[:, None])  # [B, C]
                delta_f = t * (slope[:, None] + 0.5 * curvature[:, None] * t)
                delta_f -= np.log1p(y[:, :, None] * t[:, None, :]).sum(1)
                step = t[rows, delta_f.argmin(1)] * active
            beta = beta + d * step[:, None]
            iterations += active

        diverged = ok & ~resolved
        converged = ok & ~diverged & (res <= tol)
        alpha = beta / sqrt_diag
        status = np.zeros(b, dtype=np.int64)  # NashStatus.OK
        if not converged.all():
            slack = np.square(1.0 + (4 * ridge) * beta_max * beta_max)
            certified = (lam2 >= 0) & (slack * lam2 < _CERTIFIED_DECREMENT**2)
            margin = b_kb - max(4 * n * eps, gram_error) * beta * beta.sum(1, keepdims=True)
            certified |= margin.min(1) > 0
            infeasible = ok & ~converged & (diverged | ~certified)
            status[:] = NashStatus.NOT_CONVERGED
            status[converged] = NashStatus.OK
            status[infeasible] = NashStatus.INFEASIBLE
            status[~ok] = NashStatus.DEGENERATE
            alpha[infeasible | ~ok] = 1.0 / n
            if infeasible.any():
                k_ones = sqrt_diag * np.matmul(k_hat, sqrt_diag[:, :, None])[:, :, 0]
                res_uniform = np.sqrt(np.square(k_ones / n - n).sum(1)) / (n * math.sqrt(n))
                res = np.where(infeasible, res_uniform, res)
            res = np.where(ok, res, np.nan)
    return (
        torch.from_numpy(alpha).reshape(*batch_shape, n),
        torch.from_numpy(np.asarray(res, dtype=npdt)).reshape(batch_shape),
        torch.from_numpy(iterations).reshape(batch_shape),
        torch.from_numpy(status).reshape(batch_shape),
    )


def _start_small(k_hat: np.ndarray, beta: np.ndarray, *, sweeps: int, tiny: float) -> np.ndarray:
    """:func:`_start` in numpy, for :func:`_solve_small` (vectors ``[B, N]``)."""
    n = beta.shape[1]
    if sweeps > 0:
        sweep = beta
        for _ in range(sweeps):
            k_sweep = np.matmul(k_hat, sweep[:, :, None])[:, :, 0]
            sweep = np.where(k_sweep > 0, np.sqrt(sweep / k_sweep), sweep)
        both = np.stack((beta, sweep), 2)  # [B, N, 2]
        quad = (both * np.matmul(k_hat, both)).sum(1)  # [B, 2]
        score = (0.5 * n) * np.log(np.maximum(quad, tiny)) - np.log(both).sum(1)
        better = score[:, 1] < score[:, 0]  # NaN (overflow) compares False
        beta = np.where(better[:, None], sweep, beta)
        quad = np.where(better, quad[:, 1], quad[:, 0])
    else:
        quad = (beta * np.matmul(k_hat, beta[:, :, None])[:, :, 0]).sum(1)
    return beta * np.sqrt(n / np.maximum(quad, tiny))[:, None]


def matvec(a: Tensor, v: Tensor) -> Tensor:
    """Batched matrix-vector product ``[..., N, N] × [..., N] -> [..., N]``."""
    return (a @ v[..., None])[..., 0]


class _ImplicitNash(torch.autograd.Function):
    """α(K) with the implicit-function gradient of K α = 1/α.

    Differentiating gives (K + diag(1/α²)) dα = −(dK) α, so ∂L/∂K = −sym(w αᵀ) with
    (K + diag(1/α²)) w = ∂L/∂α. With A = diag(α), K + A⁻² = A⁻¹(I + A K A)A⁻¹, so
    w = α ⊙ (I + A K A)⁻¹(α ⊙ ∂L/∂α): a Cholesky solve with eigenvalues >= 1, in float64.
    Only problems with status OK get a gradient; the others (uniform or unconverged α) get 0.
    """

    @staticmethod
    def forward(ctx, gram: Tensor, alpha: Tensor, ok: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(gram, alpha, ok)
        return alpha.clone()

    @staticmethod
    def backward(ctx, grad_alpha: Tensor):  # type: ignore[override]
        gram, alpha, ok = ctx.saved_tensors
        if not torch.is_grad_enabled() and _use_small_path(gram):
            # Small CPU problems: the same solve in numpy (see _solve_small); with create_graph
            # the torch ops below are used, so that double backward stays possible.
            g = _implicit_grad_small(gram, alpha, ok, grad_alpha)
            if g is not None:
                return g, None, None
        k = gram.double()
        k = 0.5 * (k + k.mT)
        a = alpha.double()[..., :, None]  # [..., N, 1]
        m = torch.addcmul(torch.eye(k.shape[-1], dtype=k.dtype, device=k.device), k, a * a.mT)
        chol = torch.linalg.cholesky_ex(m)[0]
        w = a * torch.cholesky_solve(a * grad_alpha.double()[..., :, None], chol)
        w = torch.where(ok[..., None, None], torch.nan_to_num(w), 0.0)
        g = -(w * a.mT)
        g = 0.5 * (g + g.mT)
        return g.to(gram.dtype), None, None


def _implicit_grad_small(
    gram: Tensor, alpha: Tensor, ok: Tensor, grad_alpha: Tensor
) -> Tensor | None:
    """:meth:`_ImplicitNash.backward` in numpy (LU instead of Cholesky; None if singular)."""
    k = gram.detach().double().numpy()
    k = 0.5 * (k + k.swapaxes(-1, -2))
    a = alpha.detach().double().numpy()[..., :, None]  # [..., N, 1]
    m = np.eye(k.shape[-1]) + k * (a * a.swapaxes(-1, -2))
    rhs = a * grad_alpha.detach().double().numpy()[..., :, None]
    with np.errstate(all="ignore"):
        try:
            w = a * np.linalg.solve(m, rhs)
        except np.linalg.LinAlgError:
            return None
        w = np.where(ok.numpy()[..., None, None], np.nan_to_num(w), 0.0)
        g = -(w * a.swapaxes(-1, -2))
        g = 0.5 * (g + g.swapaxes(-1, -2))
    return torch.from_numpy(g).to(gram.dtype)


def nash_bargaining(
    gram: Tensor,
    *,
    max_iter: int = 20,
    tol: float = 1e-6,
    init: Tensor | None = None,
    ridge: float = 1e-9,
    differentiable: bool = False,
    compute_dtype: torch.dtype | None = None,
    validate: bool = True,
) -> NashSolution:
    """Solve the Nash bargaining problem ``K α = 1/α`` for a batch of Gram matrices.

    Newton's method on the convex objective f(α) = ½ αᵀKα − Σ log α (see the module docstring;
    Nash-MTL, arXiv 2202.01017; NAMEx, arXiv 2510.16138, section 3 of our spec).

    Args:
        gram: Gram matrices ``[..., N, N]`` (symmetric positive semi-definite, any leading batch
            dimensions, e.g. one problem per MoE layer), on any device.
        max_iter: Newton iterations at most (the bargaining budget). On CPU the loop stops once
            every problem converged; on CUDA it runs exactly ``max_iter`` masked iterations (no
            host synchronisation). Typical feasible problems need 2 to 5.
        tol: convergence threshold on the relative residual ``‖Kα − 1/α‖ / ‖1/α‖``; each
            problem stops iterating once it is reached (Newton converges quadratically, so the
            returned residual is often far below it). With ``compute_dtype=float32`` the
            threshold is at least 50 float32 epsilons (6e-6).
        init: warm start ``[..., N]`` (positive, broadcastable to the batch), e.g. the previous
            step's α. Its scale does not matter (the start is rescaled optimally along its ray).
            Default ``1/√diag(K)``, exact when the players are orthogonal.
        ridge: relative Tikhonov term in [0, 1) added to the Newton matrix only
            (K + ridge · diag(K); at least N·eps of the compute dtype), a numerical safeguard;
            the fixed point and the reported residual use K itself. It also sets the smallest
            margin the solver resolves: problems whose solution needs α_i‖g_i‖ >
            min(8/√ridge, 0.25/√eps) (an improving direction within about √ridge/8 of not
            existing) are ``INFEASIBLE``.
        differentiable: if True, α carries the implicit-function gradient with respect to
            ``gram`` (``(K + diag(1/α²)) dα = −(dK) α``). Otherwise α is a constant for autograd,
            as in Nash-MTL.
        compute_dtype: dtype of the iteration, float64 (default: N is small, so it is cheap and
            reaches 1e-12 residuals) or float32 (faster on GPUs; resolves margins down to about
            1e-3 only).
        validate: check the input (shape, dtype, symmetry, finiteness) and raise ``ValueError``
            on bad input. Validation synchronises with the device; pass False in hot loops, where
            non-finite problems are then reported as ``DEGENERATE`` instead.

    Returns:
        A :class:`NashSolution` with ``alpha`` in the input's dtype (float32 for half precision
        inputs), ``residual``, ``iterations`` and ``status``. Degenerate and infeasible problems
        get uniform α = 1/N and a status, never NaN or inf.

    Statuses (:class:`NashStatus`): ``OK`` (converged to ``tol``), ``NOT_CONVERGED`` (feasibility
    certified, ``max_iter`` spent; last iterate kept), ``DEGENERATE`` (a zero player or non-finite
    input) and ``INFEASIBLE`` (no improving direction; α = 1/N). ``INFEASIBLE`` includes
    problems whose feasibility is below what the Gram matrix's precision resolves: the Nash point
    improves player i by ⟨g_i, Σ_j α_j g_j⟩ = 1/α_i, and an error of e·√(K_ii K_jj) in each
    entry moves that by up to e·‖g_i‖·Σ_j α_j‖g_j‖; unless 1/α_i exceeds this for every i (with
    β_i = α_i‖g_i‖: max_i β_i · Σ_j β_j < 1/e), the problem is reported ``INFEASIBLE``, not
    ``OK``, and a not-converged iterate must likewise improve every player by more than this to
    count as a certificate. e is set by the dtype of ``gram`` as given (not ``compute_dtype``):
    16 ulps of its accumulation dtype (rounding of the entries plus accumulation over the
    vectors' unknown length), or one ulp for half-precision entries: 3.6e-15 for float64, 1.9e-6
    for float32, 9.8e-4 for float16, 7.8e-3 for bfloat16. So a float32 Gram matrix resolves
    max β · Σ β up to 5.2e5 (e.g. uniform β <= 720/√N, margins down to about √N/720), and the
    domain vectors of experts minus their mean (which sum to zero, so no direction improves
    all of them) are INFEASIBLE in float32 as in float64, instead of a huge α made of the
    rounding residue of Σ τ_i. Vectors that are themselves only accurate to a relative δ (e.g.
    differences of nearly equal float32 tensors) need δ <= e for this to catch them: form such
    Gram matrices in float64 from float64 vectors.

    Scale: if every g_i → c·g_i then α → α/c and the direction Σ α_i g_i is unchanged; its norm
    is always √N (multiply row j of Kα = 1/α by α_j and sum: αᵀKα = N).
    """
    return _nash_bargaining(
        gram,
        max_iter=max_iter,
        tol=tol,
        init=init,
        ridge=ridge,
        differentiable=differentiable,
        compute_dtype=compute_dtype,
        validate=validate,
    )


def _nash_bargaining(
    gram: Tensor,
    *,
    max_iter: int = 20,
    tol: float = 1e-6,
    init: Tensor | None = None,
    ridge: float = 1e-9,
    differentiable: bool = False,
    compute_dtype: torch.dtype | None = None,
    validate: bool = True,
    gram_error: float | None = None,
) -> NashSolution:
    """:func:`nash_bargaining` with the Gram entries' relative error ``gram_error`` (default
    :func:`_gram_error` of the dtype of ``gram``)."""
    gram = _as_gram(gram)
    if validate:
        _validate(gram, init, max_iter, tol, ridge)
    cdtype = _compute_dtype(gram.dtype, compute_dtype)
    out_dtype = gram.dtype if gram.dtype in (torch.float32, torch.float64) else torch.float32
    if cdtype == torch.float32:
        tol = max(tol, 50 * torch.finfo(torch.float32).eps)
    solve = _solve_small if _use_small_path(gram) else _solve
    with torch.no_grad():
        alpha, residual, iterations, status = solve(
            gram.detach(),
            max_iter=max_iter,
            tol=tol,
            init=init,
            ridge=ridge,
            cdtype=cdtype,
            gram_error=gram_error,
        )
    if alpha.dtype != out_dtype:
        alpha, residual = alpha.to(out_dtype), residual.to(out_dtype)
    if differentiable and gram.requires_grad:
        alpha = _ImplicitNash.apply(gram, alpha, status == NashStatus.OK)
    return NashSolution(alpha=alpha, residual=residual, iterations=iterations, status=status)


def nash_direction(vectors: Tensor, **kwargs) -> tuple[NashSolution, Tensor]:
    """Nash bargaining among stacked player vectors ``G [..., N, P]``.

    Forms the Gram matrix in at least float32 (float64 when ``vectors`` is float64), solves with
    :func:`nash_bargaining` (keyword arguments are forwarded) and returns
    ``(solution, direction)`` with ``direction = Σ_i α_i g_i`` of shape ``[..., P]``. With
    ``differentiable=True`` the direction is differentiable through α as well as through G.

    Scale: each problem's vectors are first divided by a power of two s close to their largest
    entry (exact in floating point), so that the Gram matrix neither overflows nor underflows
    whatever the scale of G; α is mapped back (α = α̂/s for a solved problem) and the direction
    Σ α̂_i (g_i/s) = Σ α_i g_i keeps its norm √N. A zero player is still ``DEGENERATE``, and
    degenerate or infeasible problems keep uniform weights 1/N (their residual is that of 1/N on
    the unscaled problem, in float64, capped at the largest finite number of the output dtype).

    Precision: the resolution rule of :func:`nash_bargaining` (statuses) uses the error of the
    Gram matrix's dtype or, for half-precision vectors, one ulp of the vectors' dtype (their
    rounding is then the larger error), so that a bf16 problem is not certified below bf16
    precision although its Gram matrix is formed in float32. (The power-of-two scaling is exact
    and changes nothing here.)
    """
    if not isinstance(vectors, Tensor) or not vectors.is_floating_point():
        raise ValueError("vectors must be a floating-point tensor of shape [..., N, P]")
    if vectors.ndim < 2:
        raise ValueError(f"vectors must have shape [..., N, P], got {tuple(vectors.shape)}")
    work = vectors if vectors.dtype == torch.float64 else vectors.float()
    # s = 2^e with max |g| = m 2^e, m in [0.5, 1) (s = 1 for zero or non-finite problems, which
    # the solver reports as they are).
    with torch.no_grad():
        if work.shape[-1] * work.shape[-2] == 0:
            scale = work.new_ones((*work.shape[:-2], 1, 1))
        else:
            largest = work.detach().abs().amax(dim=(-1, -2), keepdim=True)
            exponent = torch.frexp(largest).exponent
            exponent = torch.where(torch.isfinite(largest), exponent, 0)
            # entries near the dtype's largest number: 2^maxexp itself would overflow to inf
            exponent = exponent.clamp(max=math.frexp(torch.finfo(work.dtype).max)[1] - 1)
            scale = torch.ldexp(torch.ones_like(largest), exponent)  # [..., 1, 1]
    unit = work / scale
    gram = unit @ unit.mT
    if not kwargs.get("differentiable", False):
        gram = gram.detach()
    gram_error = max(_gram_error(gram.dtype), torch.finfo(vectors.dtype).eps)
    solution = _nash_bargaining(gram, gram_error=gram_error, **kwargs)
    n = vectors.shape[-2]
    failed = (solution.status == NashStatus.DEGENERATE) | (solution.status == NashStatus.INFEASIBLE)
    s = scale[..., 0].to(solution.alpha.dtype)  # [..., 1]
    alpha = torch.where(failed[..., None], 1.0 / n, solution.alpha / s)
    weights = torch.where(failed[..., None], s / n, solution.alpha)  # multiply g_i / s
    direction = torch.einsum("...n,...np->...p", weights.to(work.dtype), unit)
    residual = solution.residual
    with torch.no_grad():
        # The residual of the uniform weights 1/N on K = s² K̂: ‖s² K̂1/N − N‖ / (N√N).
        k_ones = gram.detach().double().sum(-1) * scale[..., 0].double().square()
        res = (k_ones / n - n).norm(dim=-1) / (n * math.sqrt(n))
        res = res.clamp(max=torch.finfo(residual.dtype).max).to(residual.dtype)
        residual = torch.where(solution.status == NashStatus.INFEASIBLE, res, residual)
    solution = NashSolution(
        alpha=alpha, residual=residual, iterations=solution.iterations, status=solution.status
    )
    return solution, direction.to(vectors.dtype)
