"""Sparse families supported by :func:`nashmoe.hf.convert` beyond :mod:`nashmoe.moe.families`.

``qwen3_5_moe_text`` (Qwen3.5-MoE's text model, ``Qwen3_5MoeForCausalLM``, transformers 5): the
block ``Qwen3_5MoeSparseMoeBlock`` is Qwen2-MoE's (``gate.weight [E, H]``; fused
``experts.gate_up_proj [E, 2I, H]`` [out, in] with gate rows first then up rows, concatenated;
``experts.down_proj [E, H, I]``; a ``shared_expert`` MLP gated by
``sigmoid(shared_expert_gate(x))``) with the top-k scores always renormalised (its router divides
by their sum; there is no ``norm_topk_prob``). Read from ``models/qwen3_5_moe/
modeling_qwen3_5_moe.py`` (``Qwen3_5MoeTopKRouter``, ``Qwen3_5MoeExperts``).
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
}
# the family of nashmoe.moe.families whose settings and copy rules an extra family shares
_LIKE = {"qwen3_5_moe_text": ("qwen2_moe", {"norm_topk_prob": True})}

ALL_FAMILIES: dict[str, FamilyLayout] = {**FAMILIES, **EXTRA_FAMILIES}


def config_for(family: str, hf_config, *, method: str, **overrides) -> MoEConfig:
    if family in FAMILIES:
        return family_config(family, hf_config, method=method, **overrides)
    like, fixed = _LIKE[family]
    proxy = SimpleNamespace(**{**hf_config.to_dict(), **fixed})
    return family_config(like, proxy, method=method, **overrides)


class _Renamed(torch.nn.Module):
    """A view of a block under the class name of the family it shares the layout with."""


def load_block(layer, block, family: str) -> None:
    if family in FAMILIES:
        load_hf_block(layer, block, family)
        return
    like, _ = _LIKE[family]
    if type(block).__name__ != EXTRA_FAMILIES[family].block:
        raise ValueError(f"expected a {EXTRA_FAMILIES[family].block}, got {type(block).__name__}")
    # the same attribute paths as ``like``: copy through a stand-in carrying its class name
    stand_in = type(FAMILIES[like].block, (_Renamed,), {})()
    for name in ("gate", "experts", "shared_expert", "shared_expert_gate"):
        object.__setattr__(stand_in, name, getattr(block, name))
    load_hf_block(layer, stand_in, like)
