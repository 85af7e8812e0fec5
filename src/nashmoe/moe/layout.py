"""The parameter layout of one feed-forward expert, and its flattening to a vector.

An expert E is a set of tensors in ``F.linear`` orientation ([out, in]):
``w_in [f, d]``, optionally ``w_gate [f, d]`` (GLU), ``w_out [d, f]``, optionally biases
``b_in [f]`` and ``b_out [d]``. N experts are stored fused, expert-major (``w_in [N, f, d]`` ...).
Merging works on flat vectors: expert i is the concatenation of its flattened tensors (spec
section 1), so the merged experts of all units are one matrix product ``[U, N] × [N, P]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ExpertLayout"]


@dataclass(frozen=True)
class ExpertLayout:
    """Names, shapes and offsets of the tensors of one expert."""

    d_model: int
    d_ff: int
    glu: bool = False
    bias: bool = False

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        d, f = self.d_model, self.d_ff
        shapes: dict[str, tuple[int, ...]] = {"w_in": (f, d)}
        if self.glu:
            shapes["w_gate"] = (f, d)
        shapes["w_out"] = (d, f)
        if self.bias:
            shapes["b_in"] = (f,)
            shapes["b_out"] = (d,)
        return shapes

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.shapes)

    @property
    def offsets(self) -> dict[str, tuple[int, int]]:
        """``name -> (start, end)`` in the flat vector."""
        out, start = {}, 0
        for name, shape in self.shapes.items():
            end = start + math.prod(shape)
            out[name] = (start, end)
            start = end
        return out

    @property
    def numel(self) -> int:
        """P, the number of parameters of one expert."""
        return sum(math.prod(s) for s in self.shapes.values())

    def flatten(self, tensors: dict[str, Tensor], batch_dims: int) -> Tensor:
        """Concatenate ``{name: [*batch, *shape]}`` into ``[*batch, P]``."""
        parts = [tensors[name].flatten(batch_dims) for name in self.shapes]
        return torch.cat(parts, dim=-1)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views ``{name: [*batch, *shape]}`` of a flat ``[*batch, P]`` tensor."""
        shapes = self.shapes
        return {
            name: flat[..., start:end].unflatten(-1, shapes[name])
            for name, (start, end) in self.offsets.items()
        }
