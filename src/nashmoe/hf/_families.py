"""Sparse families supported by :func:`nashmoe.hf.convert` beyond :mod:`nashmoe.moe.families`.

``qwen3_5_moe_text`` (Qwen3.5-MoE's text model, ``Qwen3_5MoeForCausalLM``, transformers 5): the
block ``Qwen3_5MoeSparseMoeBlock`` is Qwen2-MoE's (``gate.weight [E, H]``; fused
``experts.gate_up_proj [E, 2I, H]`` [out, in] with gate rows first then up rows, concatenated;
``experts.down_proj [E, H, I]``; a ``shared_expert`` MLP gated by
``sigmoid(shared_expert_gate(x))``) with the top-k scores always renormalised (its router divides
by their sum; there is no ``norm_topk_prob``). Read from ``models/qwen3_5_moe/
modeling_qwen3_5_moe.py`` (``Qwen3_5MoeTopKRouter``, ``Qwen3_5MoeExperts``).

``deepseek_v2`` (``DeepseekV2ForCausalLM``): the block ``DeepseekV2Moe`` has DeepSeek-V3's
attribute paths and expert layout (``gate.weight [E, H]``, fused ``experts`` as above,
``shared_experts`` an MLP of width ``n_shared_experts · moe_intermediate_size`` added ungated)
but V2's router (``DeepseekV2TopkRouter``): float32 logits, softmax, top-k of the scores *without*
renormalisation (``norm_topk_prob`` is not read), times ``routed_scaling_factor``. Only
``topk_method="greedy"`` (the default) is supported: ``"group_limited_greedy"`` scores a group by
its best expert (V3 sums its best two), which the layer does not offer. The first
``first_k_dense_replace`` layers are dense (``DeepseekV2MLP``) and stay so.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from nashmoe.moe.config import MoEConfig
from nashmoe.moe.families import FAMILIES, FamilyLayout, family_config, load_hf_block

__all__ = ["ALL_FAMILIES", "config_for", "load_block"]

EXTRA_FAMILIES: dict[str, FamilyLayout] = {
    "qwen3_5_moe_text": FamilyLayout(
        block="Qwen3_5MoeSparseMoeBlock",
        router="gate.weight",
        selection_bias=None,
        gate_up="experts.gate_up_proj",
        down="experts.down_proj",
        shared="shared_expert",
        shared_gate="shared_expert_gate",
        num_experts="num_experts",
        expert_width="moe_intermediate_size",
    ),
    "deepseek_v2": FamilyLayout(
        block="DeepseekV2Moe",
        router="gate.weight",
        selection_bias=None,
        gate_up="experts.gate_up_proj",
        down="experts.down_proj",
        shared="shared_experts",
        shared_gate=None,
        num_experts="n_routed_experts",
        expert_width="moe_intermediate_size",
    ),
}
# the family of nashmoe.moe.families whose settings an extra family starts from, with config
# values forced, and the family whose attribute paths its block shares (for the weight copy)
_LIKE = {
    "qwen3_5_moe_text": ("qwen2_moe", {"norm_topk_prob": True}, "qwen2_moe"),
    "deepseek_v2": ("qwen3_moe", {"norm_topk_prob": False}, "deepseek_v3"),
}

ALL_FAMILIES: dict[str, FamilyLayout] = {**FAMILIES, **EXTRA_FAMILIES}


def config_for(family: str, hf_config, *, method: str, **overrides) -> MoEConfig:
    if family in FAMILIES:
        return family_config(family, hf_config, method=method, **overrides)
    like, fixed, _ = _LIKE[family]
    c = hf_config
    extra: dict = {}
    if family == "deepseek_v2":
        if getattr(c, "topk_method", "greedy") != "greedy":
            raise ValueError(
                f"deepseek_v2 with topk_method={c.topk_method!r} is not supported (only 'greedy')"
            )
        if getattr(c, "mlp_bias", False):
            raise ValueError("deepseek_v2 with mlp_bias=True is not supported")
        fixed = {**fixed, "num_experts": c.n_routed_experts}
        extra = {"shared_experts": c.n_shared_experts, "shared_d_ff": c.moe_intermediate_size}
        if method == "smoe":
            extra["routed_scaling"] = float(c.routed_scaling_factor)
    proxy = SimpleNamespace(**{**c.to_dict(), **fixed})
    return family_config(like, proxy, method=method, **{**extra, **overrides})


class _Renamed(torch.nn.Module):
    """A view of a block under the class name of the family it shares the layout with."""


def load_block(layer, block, family: str) -> None:
    if family in FAMILIES:
        load_hf_block(layer, block, family)
        return
    _, _, like = _LIKE[family]
    if type(block).__name__ != EXTRA_FAMILIES[family].block:
        raise ValueError(f"expected a {EXTRA_FAMILIES[family].block}, got {type(block).__name__}")
    # the same attribute paths as ``like``: copy through a stand-in carrying its class name
    stand_in = type(FAMILIES[like].block, (_Renamed,), {})()
    for name in ("gate", "experts", "shared_expert", "shared_expert_gate", "shared_experts"):
        if hasattr(block, name):
            object.__setattr__(stand_in, name, getattr(block, name))
    load_hf_block(layer, stand_in, like)
