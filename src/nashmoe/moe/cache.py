"""Inference cache for the input-independent part of a merging layer (spec section 5).

With frozen parameters, α, every propagated base expert E_m^{(l)} and every curved domain vector
D_i^{(l)} are input-independent, so NAMEx costs at inference what CAMEx with a fixed base costs.
The cache is keyed by every parameter's identity, storage and version counter (bumped by any
in-place update: optimizer steps, ``load_state_dict``, ``p.add_()`` under ``no_grad``), by a
global counter of optimizer steps (a ``torch.optim`` step post-hook), and by the incoming
propagation state's key, which carries the same information for every layer upstream. A stale
entry can therefore never match; changes made through ``.data`` bypass version counting, so call
``clear_cache()`` after them.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = ["InferenceCache", "optimizer_steps", "parameter_key"]

_OPTIMIZER_STEPS = 0
_HOOK = None


def _count_step(*_: Any) -> None:
    global _OPTIMIZER_STEPS
    _OPTIMIZER_STEPS += 1


def _install_hook() -> None:
    global _HOOK
    if _HOOK is None:
        _HOOK = register_optimizer_step_post_hook(_count_step)


def optimizer_steps() -> int:
    """Number of ``torch.optim`` optimizer steps taken in this process (any optimizer)."""
    _install_hook()
    return _OPTIMIZER_STEPS


def parameter_key(module: nn.Module, exclude_buffers: tuple[str, ...] = ()) -> tuple:
    """A key that changes whenever any parameter or buffer of ``module`` may have changed.

    ``exclude_buffers`` names buffers that hold solver state (warm starts) rather than anything
    the cached values depend on.
    """
    items = [(id(t), t.data_ptr(), t._version) for t in module.parameters()]
    items += [
        (id(t), t.data_ptr(), t._version)
        for name, t in module.named_buffers()
        if name not in exclude_buffers
    ]
    return (optimizer_steps(), tuple(items))


class InferenceCache:
    """A one-entry cache: the last key and its value."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: Any = None
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> Any:
        if self._key is not None and self._key == key:
            self.hits += 1
            return self._value
        self.misses += 1
        return None

    def put(self, key: tuple, value: Any) -> None:
        self._key, self._value = key, value

    def clear(self) -> None:
        self._key, self._value = None, None


_install_hook()
