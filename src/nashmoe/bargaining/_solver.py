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
every player, and the start β = 1 is α₀ = 1/√diag(K), exact for orthogonal players.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NashSolution", "NashStatus", "nash_bargaining", "nash_direction"]

# Keep iterates strictly inside α > 0: never go further than this fraction of the way to 0.
_FRACTION_TO_BOUNDARY = 0.99
# Relative asymmetry of the Gram matrix accepted by input validation.
_SYMMETRY_RTOL = 1e-4


class NashStatus(enum.IntEnum):
    """Outcome of one bargaining problem, stored as integer codes in :attr:`NashSolution.status`."""

    OK = 0
    """Converged: the relative residual is at most ``tol``."""
    NOT_CONVERGED = 1
    """Not converged within ``max_iter``; α is the last iterate, which still improves every
    player (K α > 0) but does not solve K α = 1/α to ``tol``."""
    DEGENERATE = 2
    """Some player's vector is (numerically) zero, e.g. experts upcycled from one dense FFN, or
    the input was not finite: no Nash point exists. α is uniform 1/N."""
    INFEASIBLE = 3
    """No direction improves every player (e.g. g₂ = −g₁): f is unbounded below and the iterates
    diverge. α is uniform 1/N."""


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
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be positive and finite, got {tol!r}")
    if not (ridge >= 0 and math.isfinite(ridge)):
        raise ValueError(f"ridge must be non-negative and finite, got {ridge!r}")
    if gram.numel() == 0:
        return
    if not bool(torch.isfinite(gram).all()):
        raise ValueError("gram contains NaN or inf entries")
    g = gram.double()
    scale = g.abs().amax(dim=(-1, -2))
    asym = (g - g.mT).abs().amax(dim=(-1, -2))
    if bool((asym > _SYMMETRY_RTOL * scale).any()):
        worst = float((asym / scale.clamp_min(torch.finfo(g.dtype).tiny)).max())
        raise ValueError(
            f"gram is not symmetric: max |K - K^T| / max |K| = {worst:.3g} "
            f"(tolerance {_SYMMETRY_RTOL:g})"
        )
    if bool((g.diagonal(dim1=-2, dim2=-1) < 0).any()):
        raise ValueError("gram has a negative diagonal entry: it is not a Gram matrix")
    if init is not None:
        if not isinstance(init, Tensor) or not init.is_floating_point():
            raise ValueError("init must be a floating-point tensor of shape [..., N]")
        if init.shape[-1:] != gram.shape[-1:]:
            raise ValueError(
                f"init must have shape [..., N] with N = {gram.shape[-1]}, got {tuple(init.shape)}"
            )
        if not bool(torch.isfinite(init).all()) or not bool((init > 0).all()):
            raise ValueError("init must be finite and strictly positive")


def _compute_dtype(dtype: torch.dtype, requested: torch.dtype | None) -> torch.dtype:
    if requested is not None:
        if requested not in (torch.float32, torch.float64):
            raise ValueError(f"compute_dtype must be float32 or float64, got {requested}")
        return requested
    return torch.float64


def _solve(
    gram: Tensor,
    *,
    max_iter: int,
    tol: float,
    init: Tensor | None,
    ridge: float,
    cdtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Core Newton iteration; returns (alpha, residual, iterations, status) in ``cdtype``."""
    batch_shape = gram.shape[:-2]
    n = gram.shape[-1]
    device = gram.device
    finfo = torch.finfo(cdtype)
    k = gram.to(cdtype)
    k = 0.5 * (k + k.mT)
    diag = k.diagonal(dim1=-2, dim2=-1)
    max_diag = diag.amax(-1)
    finite = torch.isfinite(k).flatten(-2).all(-1)
    # A player whose vector is zero (relative to the largest one, at rounding level) cannot be
    # improved: no Nash point exists. So are all-zero or non-finite problems.
    degenerate = ~finite | ~(max_diag > finfo.tiny) | ~(diag.amin(-1) > (finfo.eps**2) * max_diag)
    safe_diag = torch.where(degenerate[..., None], torch.ones_like(diag), diag)
    inv_sqrt_diag = safe_diag.rsqrt()
    eye = torch.eye(n, dtype=cdtype, device=device)
    k_hat = k * inv_sqrt_diag[..., :, None] * inv_sqrt_diag[..., None, :]
    k_hat = torch.where(degenerate[..., None, None], eye, k_hat)
    k_hat = torch.where(torch.isfinite(k_hat), k_hat, eye)
    # The ridge regularises the Newton matrix only: the fixed point stays exactly K α = 1/α.
    k_newton = k_hat + ridge * eye

    sqrt_diag = safe_diag.sqrt()
    if init is None:
        beta = torch.ones((*batch_shape, n), dtype=cdtype, device=device)
    else:
        beta = (init.to(device=device, dtype=cdtype) * sqrt_diag).expand(*batch_shape, n).clone()
    # Exact line search along the starting ray: f(cβ) is minimised at c = √(N / βᵀK̂β). Exact for
    # orthogonal players; for correlated ones it saves the first damped Newton steps.
    quad = (beta * matvec(k_hat, beta)).sum(-1, keepdim=True)
    beta = beta * torch.where(quad > 0, (n / quad).sqrt(), 1.0)
    cap = finfo.eps**-0.75  # β_i = α_i‖g_i‖ beyond this: numerically infeasible
    iterations = torch.zeros(batch_shape, dtype=torch.int64, device=device)
    live = ~degenerate
    sync_free = device.type != "cpu"

    for _ in range(max_iter):
        k_beta = matvec(k_hat, beta)
        inv_beta = beta.reciprocal()
        grad = k_beta - inv_beta
        res = (grad * sqrt_diag).norm(dim=-1) / (inv_beta * sqrt_diag).norm(dim=-1)
        active = live & (res > tol)
        if not sync_free and not bool(active.any()):
            break
        m = torch.addcmul(eye, k_newton, beta[..., :, None] * beta[..., None, :])
        chol = torch.linalg.cholesky_ex(m)[0]
        rhs = -beta * grad
        y = torch.cholesky_solve(rhs[..., None], chol)[..., 0]
        y = torch.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)  # failed factorisation: stay
        # Newton decrement λ² = ∇fᵀH⁻¹∇f. Candidates: the full Newton step and the damped step
        # 1/(1 + λ), which decreases the self-concordant f and keeps α > 0 by itself (Nesterov &
        # Nemirovski); both capped by the fraction-to-boundary rule. Keep the one with lower f.
        lam = (rhs * y).sum(-1).clamp_min(0).sqrt()
        t_max = torch.where(y < 0, -_FRACTION_TO_BOUNDARY / y, 1.0).amin(-1).clamp(max=1.0)
        t = torch.stack((t_max, torch.minimum(t_max, (1 + lam).reciprocal())), -1)  # [..., 2]
        # f(β + t d) − f(β) with d = β ⊙ y: t βᵀK̂d + ½ t² dᵀK̂d − Σ log(1 + t y_i), each exact.
        d = beta * y
        bkd = (k_beta * d).sum(-1, keepdim=True)
        dkd = (matvec(k_hat, d) * d).sum(-1, keepdim=True)
        delta_f = t * (bkd + 0.5 * t * dkd) - torch.log1p(t[..., :, None] * y[..., None, :]).sum(-1)
        step = torch.where(delta_f[..., 0] <= delta_f[..., 1], t[..., 0], t[..., 1])
        beta = torch.where(active[..., None], beta * (1 + step[..., None] * y), beta)
        iterations += active
        live = live & (beta.amax(-1) <= cap)

    diverged = ~degenerate & ~live

    def residual_of(b: Tensor, k_b: Tensor) -> Tensor:
        # Relative residual in the original coordinates: ‖D⁻¹(K̂β − 1/β)‖ / ‖D⁻¹/β‖.
        inv_b = b.reciprocal()
        return ((k_b - inv_b) * sqrt_diag).norm(dim=-1) / (inv_b * sqrt_diag).norm(dim=-1)

    k_beta = matvec(k_hat, beta)
    res = residual_of(beta, k_beta)
    converged = (res <= tol) & ~degenerate & ~diverged
    improving = k_beta.amin(-1) > 0
    status = torch.full(batch_shape, NashStatus.NOT_CONVERGED, dtype=torch.int64, device=device)
    status = torch.where(converged, torch.full_like(status, NashStatus.OK), status)
    infeasible = ~converged & ~degenerate & (diverged | ~improving)
    status = torch.where(infeasible, torch.full_like(status, NashStatus.INFEASIBLE), status)
    status = torch.where(degenerate, torch.full_like(status, NashStatus.DEGENERATE), status)
    fallback = degenerate | infeasible
    alpha = beta * inv_sqrt_diag
    alpha = torch.where(fallback[..., None], torch.full_like(alpha, 1.0 / n), alpha)
    # Residual of what is returned (the uniform fallback of an infeasible problem included).
    beta_out = alpha * safe_diag.sqrt()
    res = torch.where(fallback, residual_of(beta_out, matvec(k_hat, beta_out)), res)
    res = torch.where(degenerate, torch.full_like(res, math.nan), res)
    return alpha, res, iterations, status


def matvec(a: Tensor, v: Tensor) -> Tensor:
    """Batched matrix-vector product ``[..., N, N] × [..., N] -> [..., N]``."""
    return (a @ v[..., None])[..., 0]


class _ImplicitNash(torch.autograd.Function):
    """α(K) with the implicit-function gradient of K α = 1/α:
    (K + diag(1/α²)) dα = −(dK) α, so ∂L/∂K = −sym(w αᵀ) with (K + diag(1/α²)) w = ∂L/∂α."""

    @staticmethod
    def forward(ctx, gram: Tensor, alpha: Tensor, ok: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(gram, alpha, ok)
        return alpha.clone()

    @staticmethod
    def backward(ctx, grad_alpha: Tensor):  # type: ignore[override]
        gram, alpha, ok = ctx.saved_tensors
        k = 0.5 * (gram + gram.mT)
        h = k + torch.diag_embed(alpha.reciprocal().square())
        w = torch.linalg.solve(h, grad_alpha[..., None])[..., 0]
        w = torch.where(ok[..., None], w, torch.zeros_like(w))
        g = -(w[..., :, None] * alpha[..., None, :])
        g = 0.5 * (g + g.mT)
        return g, None, None


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
        max_iter: Newton iterations at most. On CPU the loop stops once every problem converged;
            on CUDA it runs exactly ``max_iter`` masked iterations (no host synchronisation).
        tol: convergence threshold on the relative residual ``‖Kα − 1/α‖ / ‖1/α‖``.
        init: warm start ``[..., N]`` (positive), e.g. the previous step's α. Default
            ``1/√diag(K)``, exact when the players are orthogonal.
        ridge: relative Tikhonov term added to the Newton matrix only (K + ridge · diag(K)), a
            numerical safeguard; the fixed point and the reported residual use K itself.
        differentiable: if True, α carries the implicit-function gradient with respect to
            ``gram`` (``(K + diag(1/α²)) dα = −(dK) α``). Otherwise α is a constant for autograd,
            as in Nash-MTL.
        compute_dtype: dtype of the iteration, float64 (default: N is small, so it is cheap and
            reaches 1e-12 residuals) or float32.
        validate: check the input (shape, dtype, symmetry, finiteness) and raise ``ValueError``
            on bad input. Validation synchronises with the device; pass False in hot loops, where
            non-finite problems are then reported as ``DEGENERATE`` instead.

    Returns:
        A :class:`NashSolution` with ``alpha`` in the input's dtype (float32 for half precision
        inputs), ``residual``, ``iterations`` and ``status``. Degenerate and infeasible problems
        get uniform α = 1/N and a status, never NaN or inf.

    Scale: if every g_i → c·g_i then α → α/c and the direction Σ α_i g_i is unchanged; its norm
    is always √N (multiply row j of Kα = 1/α by α_j and sum: αᵀKα = N).
    """
    gram = _as_gram(gram)
    if validate:
        _validate(gram, init, max_iter, tol, ridge)
    cdtype = _compute_dtype(gram.dtype, compute_dtype)
    out_dtype = gram.dtype if gram.dtype in (torch.float32, torch.float64) else torch.float32
    if cdtype == torch.float32:
        tol = max(tol, 50 * torch.finfo(torch.float32).eps)
    with torch.no_grad():
        alpha, residual, iterations, status = _solve(
            gram.detach(), max_iter=max_iter, tol=tol, init=init, ridge=ridge, cdtype=cdtype
        )
    alpha = alpha.to(out_dtype)
    residual = residual.to(out_dtype)
    if differentiable and gram.requires_grad:
        alpha = _ImplicitNash.apply(gram, alpha.to(gram.dtype), status == NashStatus.OK)
        alpha = alpha.to(out_dtype)
    return NashSolution(alpha=alpha, residual=residual, iterations=iterations, status=status)


def nash_direction(vectors: Tensor, **kwargs) -> tuple[NashSolution, Tensor]:
    """Nash bargaining among stacked player vectors ``G [..., N, P]``.

    Forms the Gram matrix in at least float32 (float64 when ``vectors`` is float64), solves with
    :func:`nash_bargaining` (keyword arguments are forwarded) and returns
    ``(solution, direction)`` with ``direction = Σ_i α_i g_i`` of shape ``[..., P]``. With
    ``differentiable=True`` the direction is differentiable through α as well as through G.
    """
    if not isinstance(vectors, Tensor) or not vectors.is_floating_point():
        raise ValueError("vectors must be a floating-point tensor of shape [..., N, P]")
    if vectors.ndim < 2:
        raise ValueError(f"vectors must have shape [..., N, P], got {tuple(vectors.shape)}")
    work = vectors if vectors.dtype == torch.float64 else vectors.float()
    gram = work @ work.mT
    if not kwargs.get("differentiable", False):
        gram = gram.detach()
    solution = nash_bargaining(gram, **kwargs)
    direction = torch.einsum("...n,...np->...p", solution.alpha.to(work.dtype), work)
    return solution, direction.to(vectors.dtype)
