"""Nash-MTL gradient aggregation on top of the batched solver.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, "Multi-Task Learning as a Bargaining
Game", ICML 2022 (arXiv 2202.01017). The update direction for T tasks with gradients g_1..g_T is the
Nash bargaining solution Σ α_t g_t with (G Gᵀ) α = 1/α.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nashmoe.bargaining._solver import NashSolution, NashStatus, nash_bargaining

__all__ = ["NashMTL", "NashMTLOutput"]


@dataclass(frozen=True)
class NashMTLOutput:
    """What :class:`NashMTL` returns for one step.

    Attributes:
        weights: task weights α ``[T]`` actually used (after any fallback); constants for
            autograd.
        gradient: the aggregated gradient Σ α_t g_t ``[P]`` (clipped to ``max_norm`` if set),
            detached from the graph. (Typed optional for aggregators fed a Gramian; ``forward``
            always fills it.)
        solution: the solver's result, or ``None`` when the weights were reused
            (``update_weights_every`` > 1).
        fallback: True when the solve failed (degenerate or infeasible gradients) and the
            previous (or uniform) weights were used.
    """

    weights: Tensor
    gradient: Tensor | None
    solution: NashSolution | None
    fallback: bool


class NashMTL(nn.Module):
    """Nash-MTL aggregator: per-task gradients in, task weights and one gradient out.

    Args:
        update_weights_every: re-solve for α every this many calls and reuse α in between
            (Nash-MTL's option to amortise its slow solver; ours is fast, so 1 is the default).
        max_norm: if set, clip the aggregated gradient to this L2 norm. Scale: the Nash direction
            always has norm √T whatever the scale of the gradients (αᵀKα = T), so α absorbs the
            gradients' scale (α ∝ 1/scale; weights like [47, 732] just mean small gradients) and
            the step length is set by the learning rate and this clip alone: with
            ``max_norm < √T`` every step has norm exactly ``max_norm`` (a converged solve),
            otherwise √T. Nash-MTL clips at 1.0.
        max_iter, tol: solver settings (see :func:`nash_bargaining`).
        warm_start: start each solve from the previous α (Nash-MTL does).
        fallback: on a failed solve (degenerate or infeasible gradients), use the ``"last"``
            good α (uniform if none yet) or ``"uniform"`` weights 1/T. Failures are counted in
            :attr:`num_fallbacks`, never hidden. A ``NOT_CONVERGED`` solve (a Nash point exists
            but ``max_iter`` did not reach ``tol``) is used as it is; see ``out.solution``.

    .. warning:: The module is stateful (warm start, reuse, counters). Call :meth:`reset` between
       independent runs; the state lives in buffers and is saved with ``state_dict``.

    Example::

        agg = NashMTL(max_norm=1.0)
        out = agg(torch.stack([g1, g2]))   # [2, P] -> weights [2], gradient [P]
    """

    def __init__(
        self,
        *,
        update_weights_every: int = 1,
        max_norm: float | None = None,
        max_iter: int = 20,
        tol: float = 1e-6,
        warm_start: bool = True,
        fallback: str = "last",
    ) -> None:
        super().__init__()
        if (
            isinstance(update_weights_every, bool)
            or not isinstance(update_weights_every, int)
            or update_weights_every < 1
        ):
            raise ValueError(
                f"update_weights_every must be an integer >= 1, got {update_weights_every!r}"
            )
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be positive or None, got {max_norm!r}")
        if fallback not in ("last", "uniform"):
            raise ValueError(f"fallback must be 'last' or 'uniform', got {fallback!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        if not (tol > 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be positive and finite, got {tol!r}")
        self.update_weights_every = update_weights_every
        self.max_norm = max_norm
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.fallback = fallback
        self.register_buffer("alpha", torch.empty(0, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("num_fallbacks", torch.zeros((), dtype=torch.int64))

    def reset(self) -> None:
        """Forget the warm start, the reused weights and the counters."""
        self.alpha = torch.empty(0, dtype=torch.float64, device=self.alpha.device)
        self.step.zero_()
        self.num_fallbacks.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The number of tasks is only known after the first call: resize before loading.
        key = prefix + "alpha"
        if key in state_dict:
            self.alpha = torch.empty_like(state_dict[key], device=self.alpha.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def weights_from_gram(self, gram: Tensor) -> tuple[Tensor, NashSolution | None, bool]:
        """Task weights from the Gramian ``[T, T]`` of the task gradients.

        Returns ``(weights, solution, fallback)``; ``solution`` is None when α was reused.
        """
        if not isinstance(gram, Tensor) or gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
            shape = tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__
            raise ValueError(f"gram must be a square matrix [T, T], got {shape}")
        n = gram.shape[-1]
        have_previous = self.alpha.numel() == n
        if self.alpha.numel() not in (0, n):
            raise ValueError(
                f"NashMTL was used with {self.alpha.numel()} tasks and now gets {n}; call reset()"
            )
        reuse = have_previous and int(self.step) % self.update_weights_every != 0
        if reuse:
            self.step += 1
            return self.alpha.to(device=gram.device, dtype=gram.dtype), None, False
        init = self.alpha if (self.warm_start and have_previous) else None
        # Bad input raises here, before any state changes.
        solution = nash_bargaining(gram, max_iter=self.max_iter, tol=self.tol, init=init)
        self.step += 1
        status = int(solution.status)
        failed = status in (NashStatus.DEGENERATE, NashStatus.INFEASIBLE)
        if failed:
            self.num_fallbacks += 1
            if self.fallback == "last" and have_previous:
                weights = self.alpha.to(device=gram.device, dtype=gram.dtype)
            else:
                weights = torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
        else:
            weights = solution.alpha.to(gram.dtype)
            self.alpha = solution.alpha.detach().to(torch.float64)
        return weights, solution, failed

    def forward(self, matrix: Tensor) -> NashMTLOutput:
        """Aggregate a matrix of per-task gradients ``[T, P]``."""
        if not isinstance(matrix, Tensor) or matrix.ndim != 2 or not matrix.is_floating_point():
            raise ValueError("NashMTL expects a floating-point matrix of task gradients [T, P]")
        if not bool(torch.isfinite(matrix).all()):
            raise ValueError("the task gradients contain NaN or inf")
        work = matrix.detach()
        work = work if work.dtype == torch.float64 else work.float()
        weights, solution, failed = self.weights_from_gram(work @ work.T)
        gradient = weights.to(work.dtype) @ work
        if self.max_norm is not None:
            norm = gradient.norm()
            gradient = gradient * torch.clamp(self.max_norm / (norm + 1e-12), max=1.0)
        return NashMTLOutput(
            weights=weights.to(matrix.dtype),
            gradient=gradient.to(matrix.dtype),
            solution=solution,
            fallback=failed,
        )

    def backward(self, losses: Sequence[Tensor], parameters: Iterable[Tensor]) -> NashMTLOutput:
        """Compute one gradient per loss, aggregate them and write the result into ``.grad``.

        A convenience for small models: it runs one backward pass per task (as Nash-MTL does).
        """
        params = [p for p in parameters if p.requires_grad]
        if not params:
            raise ValueError("NashMTL.backward needs at least one parameter that requires grad")
        rows = []
        for loss in losses:
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(grads, params)
                    ]
                )
            )
        out = self(torch.stack(rows))
        offset = 0
        for p in params:
            n = p.numel()
            g = out.gradient[offset : offset + n].view_as(p).to(p.dtype)
            p.grad = g.clone() if p.grad is None else p.grad + g
            offset += n
        return out

    def extra_repr(self) -> str:
        return (
            f"update_weights_every={self.update_weights_every}, max_norm={self.max_norm}, "
            f"max_iter={self.max_iter}, tol={self.tol:g}, warm_start={self.warm_start}, "
            f"fallback={self.fallback!r}"
        )
