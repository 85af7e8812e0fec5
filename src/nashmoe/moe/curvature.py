"""Kronecker-factored curvature operators M_i of CAMEx.

Nguyen et al., "CAMEx: Curvature-aware Merging of Experts", ICLR 2025 (arXiv 2502.18821). For a
tensor of shape [o, i], factor o = o1·o2 and i = i1·i2 (o1 the largest divisor of o not above √o);
M_i(τ) reshapes τ to [o1, o2, i1, i2] and multiplies each mode by its own learned square matrix,
summing R such terms (rank R). Bias tensors get the analogous 2-mode operator.

The initial scale is explicit: every mode matrix starts at s·I with s = (c/R)^(1/modes), so that
M_i = c·I exactly at initialisation. (The public CAMEx code starts every one of its R terms at the
identity, i.e. M_i = R·I: the same as η = R at initialisation.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nashmoe.moe.layout import ExpertLayout

__all__ = ["KroneckerCurvature", "split_factor"]


def split_factor(n: int) -> tuple[int, int]:
    """``(a, n // a)`` with ``a`` the largest divisor of ``n`` not above √n."""
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a, n // a


class KroneckerCurvature(nn.Module):
    """One Kronecker-factored operator per expert and per tensor.

    Each mode product is one (broadcast) batched matrix product on a view of τ; no product of mode
    matrices is ever formed.

    Args:
        layout: the expert layout (which tensors, which shapes).
        num_experts: N.
        rank: R ≥ 1, the number of Kronecker terms summed.
        init_scale: c, the operator equals c·I at initialisation.
    """

    def __init__(self, layout: ExpertLayout, *, num_experts: int, rank: int, init_scale: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.layout = layout
        self.num_experts = num_experts
        self.rank = rank
        self.init_scale = float(init_scale)
        self.factors: dict[str, tuple[int, ...]] = {}
        self.modes = nn.ParameterDict()
        for name, shape in layout.shapes.items():
            dims = tuple(f for n in shape for f in split_factor(n))
            self.factors[name] = dims
            scale = (self.init_scale / rank) ** (1.0 / len(dims))
            for k, m in enumerate(dims):
                eye = torch.eye(m).expand(rank, num_experts, m, m)
                self.modes[f"{name}_{k}"] = nn.Parameter(scale * eye.clone())

    def mode_matrices(self, name: str) -> list[Tensor]:
        return [self.modes[f"{name}_{k}"] for k in range(len(self.factors[name]))]

    def forward(self, vectors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Apply M_i to every expert's domain vectors ``{name: [N, *shape]}``."""
        out = {}
        for name, part in vectors.items():
            dims = self.factors[name]
            n = part.shape[0]
            t = part.reshape(1, n, -1)  # broadcast over the R rank terms
            mats = self.mode_matrices(name)
            for k, mat in enumerate(mats):
                pre, m = math.prod(dims[:k]), dims[k]
                if k == len(dims) - 1:  # last mode: t [R, N, pre, m] @ Aᵀ
                    t = t.reshape(t.shape[0], n, pre, m) @ mat.transpose(-1, -2).to(t.dtype)
                else:  # A [R, N, 1, m, m] @ t [R, N, pre, m, post]
                    post = math.prod(dims[k + 1 :])
                    t = mat[:, :, None].to(t.dtype) @ t.reshape(t.shape[0], n, pre, m, post)
            out[name] = t.sum(dim=0).reshape(part.shape)
        return out

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, rank={self.rank}, init_scale={self.init_scale:g}"
