"""TorchJD interop: our Nash bargaining solver as a TorchJD ``Weighting`` and ``Aggregator``.

`TorchJD <https://github.com/SimplexLab/TorchJD>`_ (extra ``torchjd``: ``pip install
'nashmoe[torchjd]'``) aggregates a Jacobian ``J [m, n]`` (one row per task) into one vector
``[n]``. This module plugs :func:`~nashmoe.bargaining.nash_bargaining` into its API:

- :class:`NashMTLWeighting`: a ``Weighting`` of the **Gramian** ``J Jᵀ [m, m]`` giving the Nash-MTL
  weights ``[m]`` (usable with ``torchjd.autogram.Engine``, whose Gramian never needs ``J``);
- :class:`NashMTL`: a ``GramianWeightedAggregator`` (``J`` in, ``wᵀJ`` out) for
  ``torchjd.autojac.backward`` / ``mtl_backward`` followed by ``jac_to_grad`` (also with
  ``optimize_gramian_computation=True``).

Both mirror ``torchjd.aggregation.NashMTL``: same arguments (``n_tasks``, ``max_norm`` with 0 to
disable, ``update_weights_every``, ``optim_niter``), ``reset()``, the same weights up to solver
accuracy (the aggregated vector agrees to cosine 1.0 where TorchJD's solver converges), the
same clipping (the weights are scaled so that ``‖wᵀJ‖ <= max_norm``). Differences:

- no cvxpy/ECOS: an exact Newton solve of ``K α = 1/α`` in float64 (typically 2 to 5 iterations
  to a relative residual below ``tol``) instead of up to ``optim_niter`` rounds of a sequential
  convex approximation. ``max_iter`` (alias ``optim_niter``) bounds the Newton iterations.
- ``n_tasks`` is optional (inferred from the first call); when given, a Jacobian with another
  number of rows raises ``ValueError``. Non-finite input raises ``ValueError``.
- explicit statuses: :attr:`NashMTLWeighting.last_solution` holds the solver's
  :class:`~nashmoe.bargaining.NashSolution` (``None`` when the weights were reused).
- fallback on degenerate (a zero row) or infeasible (no direction improves every task, e.g.
  opposite rows) problems: the previous weights (``fallback="last"``, uniform ``1/m`` on the first
  call) or uniform ones, counted in :attr:`NashMTLWeighting.num_fallbacks`. TorchJD's solver has no
  such notion (its weights on such problems are whatever cvxpy returns).
- the state (warm start, reused weights, counters) lives in buffers of an inner
  :class:`nashmoe.bargaining.NashMTL` and is saved with ``state_dict``.

Like TorchJD's, both are non-differentiable: their outputs are constants for autograd.

Example::

    from torchjd.autojac import backward, jac_to_grad
    from nashmoe.bargaining.torchjd import NashMTL

    aggregator = NashMTL(n_tasks=2)          # drop-in for torchjd.aggregation.NashMTL(n_tasks=2)
    backward([loss1, loss2])                 # fills .jac of the parameters
    weights = jac_to_grad(model.parameters(), aggregator)   # fills .grad, returns the weights
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from nashmoe._optional import require
from nashmoe.bargaining._nash_mtl import NashMTL as _CoreNashMTL
from nashmoe.bargaining._solver import NashSolution

_PURPOSE = "nashmoe.bargaining.torchjd"
_torchjd = require("torchjd", extra="torchjd", purpose=_PURPOSE)
_aggregation = require("torchjd.aggregation", extra="torchjd", purpose=_PURPOSE)

# torchjd >= 0.18 exports Stateful at the top level; some versions only in torchjd.aggregation.
Stateful: Any = getattr(_torchjd, "Stateful", None) or _aggregation.Stateful
_Weighting: Any = _aggregation.Weighting
_GramianWeightedAggregator: Any = _aggregation.GramianWeightedAggregator

__all__ = ["NashMTL", "NashMTLWeighting"]


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_max_norm(value: object) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"max_norm must be a non-negative number (0 disables), got {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"max_norm must be non-negative and finite (0 disables), got {value!r}")
    return float(value)


def _resolve_max_iter(max_iter: int | None, optim_niter: int | None) -> int:
    if max_iter is not None and optim_niter is not None and max_iter != optim_niter:
        raise ValueError(
            f"max_iter={max_iter!r} and its alias optim_niter={optim_niter!r} disagree"
        )
    value = max_iter if max_iter is not None else optim_niter
    return _check_positive_int("max_iter", 20 if value is None else value)


class NashMTLWeighting(_Weighting, Stateful):
    """Stateful TorchJD ``Weighting`` of a Gramian ``J Jᵀ [m, m]``: the Nash-MTL weights ``[m]``.

    Args:
        n_tasks: number of tasks (rows of ``J``); ``None`` infers it from the first call.
        max_norm: scale the weights down so that ``‖wᵀJ‖ = √(wᵀKw) <= max_norm``; 0 (or None)
            disables clipping. Default 1.0 as in TorchJD. (Unclipped, the Nash direction has norm
            exactly √m whatever the scale of ``J``.)
        update_weights_every: solve every this many calls and reuse the weights in between.
        max_iter: Newton iterations at most, default 20 (TorchJD's ``optim_niter``, also accepted
            by that name).
        tol: convergence threshold on the relative residual ``‖Kα − 1/α‖ / ‖1/α‖``.
        warm_start: start each solve from the previous weights.
        fallback: ``"last"`` or ``"uniform"`` weights on degenerate or infeasible problems (see
            :class:`nashmoe.bargaining.NashMTL`).

    Attributes:
        last_solution: the last call's :class:`~nashmoe.bargaining.NashSolution` (status,
            residual, iterations), or ``None`` if the weights were reused (or before any call).
        last_fallback: whether the last call fell back.
    """

    def __init__(
        self,
        n_tasks: int | None = None,
        max_norm: float | None = 1.0,
        update_weights_every: int = 1,
        max_iter: int | None = None,
        *,
        optim_niter: int | None = None,
        tol: float = 1e-6,
        warm_start: bool = True,
        fallback: str = "last",
    ) -> None:
        super().__init__()
        if n_tasks is not None:
            _check_positive_int("n_tasks", n_tasks)
        self._n_tasks = n_tasks
        self._max_norm = _check_max_norm(max_norm)
        self.core = _CoreNashMTL(
            update_weights_every=update_weights_every,
            max_norm=None,
            max_iter=_resolve_max_iter(max_iter, optim_niter),
            tol=tol,
            warm_start=warm_start,
            fallback=fallback,
        )
        self.last_solution: NashSolution | None = None
        self.last_fallback = False

    # TorchJD-style settable hyperparameters (changing them does not reset the state).
    @property
    def n_tasks(self) -> int | None:
        return self._n_tasks

    @n_tasks.setter
    def n_tasks(self, value: int | None) -> None:
        self._n_tasks = None if value is None else _check_positive_int("n_tasks", value)

    @property
    def max_norm(self) -> float:
        return self._max_norm

    @max_norm.setter
    def max_norm(self, value: float | None) -> None:
        self._max_norm = _check_max_norm(value)

    @property
    def update_weights_every(self) -> int:
        return self.core.update_weights_every

    @update_weights_every.setter
    def update_weights_every(self, value: int) -> None:
        self.core.update_weights_every = _check_positive_int("update_weights_every", value)

    @property
    def max_iter(self) -> int:
        return self.core.max_iter

    @max_iter.setter
    def max_iter(self, value: int) -> None:
        self.core.max_iter = _check_positive_int("max_iter", value)

    # TorchJD's name for max_iter.
    optim_niter = max_iter

    @property
    def num_fallbacks(self) -> int:
        """Solves that failed (degenerate or infeasible) since the last :meth:`reset`."""
        return int(self.core.num_fallbacks)

    def reset(self) -> None:
        """Forget the warm start, the reused weights and the counters."""
        self.core.reset()
        self.last_solution = None
        self.last_fallback = False

    def forward(self, gramian: Tensor, /) -> Tensor:
        with torch.no_grad():
            return self._weights(gramian)

    def _weights(self, gramian: Tensor) -> Tensor:
        if not isinstance(gramian, Tensor) or not gramian.is_floating_point():
            raise ValueError("NashMTLWeighting expects a floating-point Gramian [m, m]")
        if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
            raise ValueError(
                f"the Gramian must be a square matrix [m, m], got {tuple(gramian.shape)}"
            )
        m = gramian.shape[0]
        if self._n_tasks is not None and m != self._n_tasks:
            raise ValueError(f"expected {self._n_tasks} tasks (n_tasks), got a Gramian for {m}")
        if m == 0:
            return gramian.new_zeros(0)
        if not bool(torch.isfinite(gramian).all()):
            raise ValueError("the Gramian contains NaN or inf (non-finite Jacobian?)")
        work = gramian.detach()
        if work.dtype not in (torch.float32, torch.float64):
            work = work.float()
        weights, solution, failed = self.core.weights_from_gram(work)
        self.last_solution, self.last_fallback = solution, failed
        if self._max_norm > 0:
            # ‖wᵀJ‖² = wᵀ K w, in float64.
            w = weights.double()
            norm = torch.sqrt(torch.clamp(w @ (work.double() @ w), min=0.0))
            factor = torch.clamp(self._max_norm / torch.clamp(norm, min=1e-300), max=1.0)
            weights = (w * factor).to(weights.dtype)
        return weights.to(gramian.dtype)

    def extra_repr(self) -> str:
        return (
            f"n_tasks={self.n_tasks}, max_norm={self.max_norm}, "
            f"update_weights_every={self.update_weights_every}, max_iter={self.max_iter}, "
            f"tol={self.core.tol:g}, warm_start={self.core.warm_start}, "
            f"fallback={self.core.fallback!r}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class NashMTL(_GramianWeightedAggregator, Stateful):
    """Stateful TorchJD ``Aggregator``: Jacobian ``J [m, n]`` in, Nash-MTL vector ``wᵀJ [n]`` out.

    A drop-in replacement for ``torchjd.aggregation.NashMTL`` built on our solver (no cvxpy); the
    arguments are those of :class:`NashMTLWeighting`, which it applies to ``J Jᵀ``
    (:attr:`gramian_weighting`). Use it with ``torchjd.autojac.jac_to_grad`` after
    ``backward`` or ``mtl_backward``.
    """

    gramian_weighting: NashMTLWeighting

    def __init__(
        self,
        n_tasks: int | None = None,
        max_norm: float | None = 1.0,
        update_weights_every: int = 1,
        max_iter: int | None = None,
        *,
        optim_niter: int | None = None,
        tol: float = 1e-6,
        warm_start: bool = True,
        fallback: str = "last",
    ) -> None:
        super().__init__(
            NashMTLWeighting(
                n_tasks,
                max_norm,
                update_weights_every,
                max_iter,
                optim_niter=optim_niter,
                tol=tol,
                warm_start=warm_start,
                fallback=fallback,
            )
        )

    def __call__(self, matrix: Tensor, /) -> Tensor:
        # Non-differentiable, like TorchJD's NashMTL: the output is a constant for autograd.
        with torch.no_grad():
            return super().__call__(matrix)

    def forward(self, matrix: Tensor, /) -> Tensor:
        if not matrix.is_floating_point():
            raise ValueError(f"NashMTL expects a floating-point Jacobian, got {matrix.dtype}")
        return super().forward(matrix)

    @property
    def n_tasks(self) -> int | None:
        return self.gramian_weighting.n_tasks

    @n_tasks.setter
    def n_tasks(self, value: int | None) -> None:
        self.gramian_weighting.n_tasks = value

    @property
    def max_norm(self) -> float:
        return self.gramian_weighting.max_norm

    @max_norm.setter
    def max_norm(self, value: float | None) -> None:
        self.gramian_weighting.max_norm = value

    @property
    def update_weights_every(self) -> int:
        return self.gramian_weighting.update_weights_every

    @update_weights_every.setter
    def update_weights_every(self, value: int) -> None:
        self.gramian_weighting.update_weights_every = value

    @property
    def max_iter(self) -> int:
        return self.gramian_weighting.max_iter

    @max_iter.setter
    def max_iter(self, value: int) -> None:
        self.gramian_weighting.max_iter = value

    optim_niter = max_iter

    @property
    def last_solution(self) -> NashSolution | None:
        return self.gramian_weighting.last_solution

    @property
    def last_fallback(self) -> bool:
        return self.gramian_weighting.last_fallback

    @property
    def num_fallbacks(self) -> int:
        return self.gramian_weighting.num_fallbacks

    def reset(self) -> None:
        """Forget the warm start, the reused weights and the counters."""
        self.gramian_weighting.reset()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.gramian_weighting.extra_repr()})"

    def __str__(self) -> str:
        return "NashMTL"
