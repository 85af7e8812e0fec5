"""Analyses of trained MoE layers that users (and ``nashmoe compare``) want to see.

- :func:`expert_output_similarity`: cosine similarity between the outputs of the experts on the
  same tokens, per layer (the NAMEx paper's "cooperation vs competition" view, arXiv 2510.16138).
- :func:`capture_moe_inputs`: the inputs each MoE layer of a model receives on a batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nashmoe.moe.ffn import dense_ffn
from nashmoe.moe.layer import MoEFeedForward

__all__ = ["capture_moe_inputs", "expert_output_similarity", "mean_offdiagonal"]


@torch.no_grad()
def expert_output_similarity(layer: MoEFeedForward, x: Tensor, max_tokens: int = 4096) -> Tensor:
    """Mean cosine similarity ``[N, N]`` between expert i's and expert j's outputs on the tokens
    of ``x [..., d]`` (each expert applied alone, as a dense FFN; at most ``max_tokens`` tokens)."""
    if layer.config.method == "dense":
        raise ValueError("a dense layer has no experts to compare")
    tokens = x.reshape(-1, x.shape[-1])[:max_tokens]
    experts = layer.expert_tensors()
    n = layer.config.num_experts
    outs = torch.stack(
        [dense_ffn(tokens, {k: v[i] for k, v in experts.items()}, layer.act) for i in range(n)]
    )  # [N, M, d]
    unit = F.normalize(outs.float(), dim=-1)
    return torch.einsum("imd,jmd->ij", unit, unit) / tokens.shape[0]


def mean_offdiagonal(matrix: Tensor) -> float:
    """Mean of the off-diagonal entries of a square matrix (1.0 for a 1×1 matrix)."""
    n = matrix.shape[0]
    if n == 1:
        return 1.0
    return float((matrix.sum() - matrix.diagonal().sum()) / (n * (n - 1)))


@torch.no_grad()
def capture_moe_inputs(model: nn.Module, run: Callable[[], object]) -> list[Tensor]:
    """Run ``run()`` (a forward pass of ``model``) and return the input of every MoE layer
    (non-dense :class:`MoEFeedForward`, registration order)."""
    layers = [
        m for m in model.modules() if isinstance(m, MoEFeedForward) and m.config.method != "dense"
    ]
    captured: list[Tensor | None] = [None] * len(layers)
    handles = []
    for i, layer in enumerate(layers):

        def hook(module, args, i=i):
            captured[i] = args[0].detach()

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return [c for c in captured if c is not None]
