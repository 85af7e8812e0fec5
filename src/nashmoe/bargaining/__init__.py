"""Nash bargaining: a batched solver and Nash-MTL style gradient aggregation.

- :func:`nash_bargaining` solves ``K α = 1/α`` for a batch of Gram matrices.
- :func:`nash_direction` bargains among stacked vectors and returns ``Σ α_i g_i``.
- :class:`NashMTL` aggregates per-task gradients (Navon et al., arXiv 2202.01017).
- :mod:`nashmoe.bargaining.reference`: the same problem in cvxpy/Clarabel, for cross-checks
  (extra ``ref``; not imported here).
- :mod:`nashmoe.bargaining.torchjd`: the solver as a TorchJD ``Weighting`` and ``Aggregator``
  (``NashMTLWeighting``, ``NashMTL``; extra ``torchjd``; not imported here).
"""

from nashmoe.bargaining._nash_mtl import NashMTL, NashMTLOutput
from nashmoe.bargaining._solver import NashSolution, NashStatus, nash_bargaining, nash_direction

__all__ = [
    "NashMTL",
    "NashMTLOutput",
    "NashSolution",
    "NashStatus",
    "nash_bargaining",
    "nash_direction",
]
