"""nashmoe: Nash-bargaining expert merging for sparse Mixture-of-Experts.

Subpackages:
- :mod:`nashmoe.bargaining`: the batched Nash bargaining solver and :class:`NashMTL`.
"""

from nashmoe._version import __version__

__all__ = ["__version__"]
