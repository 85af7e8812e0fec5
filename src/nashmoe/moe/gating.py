"""Router scores and expert selection of real MoE families, and aux-loss-free balancing.

The top-k routers of Hugging Face transformers 5 (``models/*/modeling_*.py``), which
:func:`topk_route` reproduces given the same logits:

| family | scores | selection | weights of the k chosen |
|---|---|---|---|
| Mixtral | softmax | top-k of the scores | renormalised (Σ = 1) |
| Qwen1.5/Qwen2-MoE, OLMoE | softmax | top-k | as is (``norm_topk_prob=False``) |
| Qwen3-MoE | softmax | top-k | renormalised (``norm_topk_prob=True``) |
| DeepSeek-V3 | sigmoid | top-k of score + bias, group-limited | unbiased scores, renormalised
  (+1e-20), × ``routed_scaling_factor`` |

Group-limited top-k (DeepSeek-V3's ``DeepseekV3TopkRouter``): the N experts form ``n_group``
equal groups; a group's score is the sum of the two highest selection scores in it; only the
``topk_group`` best groups are eligible for the top-k.

Aux-loss-free balancing (Wang et al., arXiv 2408.15664; DeepSeek-V3; torchtitan's
``expert_bias``): the bias b is added to the scores for the selection only; after each step
``b_i += u · sign(mean load − load_i)``, centred so that Σ b stays 0 (only differences of b
matter for the selection). ``sign`` makes the update independent of how many forwards were
counted (gradient accumulation); a forward recomputed by activation checkpointing is not
counted. Under data parallelism, all-reduce the load counts before the update so every replica
applies the same bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["merge_selection", "topk_route", "update_bias", "update_router_biases"]


def topk_route(
    logits: Tensor,
    top_k: int,
    *,
    score_func: str = "softmax",
    norm_topk: bool = True,
    routed_scaling: float = 1.0,
    n_group: int | None = None,
    topk_group: int | None = None,
    selection_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Scores, chosen experts and their weights for every token.

    Args:
        logits: router logits ``[M, N]`` (float32 or float64).
        top_k: experts per token.
        score_func: ``"softmax"`` or ``"sigmoid"``.
        norm_topk: renormalise the k chosen scores to sum to one.
        routed_scaling: factor on the weights (after the renormalisation).
        n_group, topk_group: group-limited selection (both or neither).
        selection_bias: ``[N]``, added to the scores for the selection only (no gradient).

    Returns:
        ``(scores [M, N], top_idx [M, k], top_w [M, k])``.
    """
    if score_func == "softmax":
        scores = torch.softmax(logits, dim=-1)
    elif score_func == "sigmoid":
        scores = torch.sigmoid(logits)
    else:
        raise ValueError(f"unknown score_func {score_func!r}")
    choice = scores.detach()
    if selection_bias is not None:
        choice = choice + selection_bias.to(choice.dtype)
    if n_group is not None and n_group > 1:
        m, n = choice.shape
        grouped = choice.view(m, n_group, n // n_group)
        group_scores = grouped.topk(min(2, n // n_group), dim=-1)[0].sum(dim=-1)
        group_idx = group_scores.topk(topk_group, dim=-1, sorted=False)[1]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
        keep = keep[:, :, None].expand_as(grouped).reshape(m, n)
        choice = choice.masked_fill(~keep, float("-inf"))
    if selection_bias is None and n_group is None:
        top_w, top_idx = scores.topk(top_k, dim=-1)
    else:
        top_idx = choice.topk(top_k, dim=-1, sorted=False)[1]
        top_w = scores.gather(1, top_idx)
    if norm_topk:
        top_w = top_w / top_w.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    if routed_scaling != 1.0:
        top_w = top_w * routed_scaling
    return scores, top_idx, top_w


def merge_selection(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``merge_top_k``: the k highest scores of every unit, renormalised over them.

    Returns ``(weights [U, k], index [U, k])``.
    """
    top, index = scores.topk(k, dim=-1)
    return top / top.sum(dim=-1, keepdim=True), index


@torch.no_grad()
def update_bias(bias: Tensor, load: Tensor, rate: float) -> Tensor:
    """One aux-loss-free step on ``bias`` in place from the token counts ``load`` [N]; resets
    ``load``. Returns the applied change."""
    delta = rate * torch.sign(load.mean() - load)
    delta = delta - delta.mean()
    bias.add_(delta.to(bias.dtype))
    load.zero_()
    return delta


def update_router_biases(model: nn.Module) -> int:
    """Call :meth:`~nashmoe.moe.MoEFeedForward.update_router_bias` on every MoE layer of
    ``model`` that uses ``bias_balancing``; returns how many were updated."""
    count = 0
    for m in model.modules():  # duck-typed: the layer module imports this one
        if hasattr(m, "update_router_bias") and getattr(m, "expert_bias", None) is not None:
            m.update_router_bias()
            count += 1
    return count
