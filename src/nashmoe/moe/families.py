"""MoE blocks of real model families (Hugging Face transformers 5): settings and weight copy.

:func:`family_config` returns the :class:`~nashmoe.moe.MoEConfig` whose ``smoe`` layer computes
what the family's sparse block computes, and :func:`load_hf_block` copies a block's weights into
a :class:`~nashmoe.moe.MoEFeedForward` (:func:`from_hf_block` does both). Tested against
``MixtralSparseMoeBlock``, ``Qwen2MoeSparseMoeBlock``, ``Qwen3MoeSparseMoeBlock``,
``OlmoeSparseMoeBlock`` and ``DeepseekV3MoE`` (float32, ≤ 1e-5).

Layouts are read from the transformers 5 sources (``models/<family>/modeling_<family>.py``),
never guessed from shapes (they can coincide: [E, 2I, H] and [E, H, 2I] when H = 2I). Every
family in :data:`FAMILIES` stores, in its ``XxxExperts`` module:

- ``gate_up_proj [E, 2I, H]`` in ``F.linear`` orientation ([out, in]); the product with a token
  gives 2I values, ``.chunk(2, dim=-1)``: **rows [0, I) are the gate, rows [I, 2I) are up**
  (concatenated, not interleaved); the hidden state is ``act(gate) * up``.
- ``down_proj [E, H, I]`` ([out, in]).
- no biases.

Ours (:class:`~nashmoe.moe.layout.ExpertLayout` with ``glu=True``): ``w_gate [E, I, H]`` (gate),
``w_in [E, I, H]`` (up), ``w_out [E, H, I]`` (down), hidden ``act(w_gate x) * (w_in x)``. The
shared experts are ``XxxMLP`` modules with ``nn.Linear`` ``gate_proj [I_s, H]``, ``up_proj
[I_s, H]``, ``down_proj [H, I_s]`` (no bias), copied to ``shared_w_gate``, ``shared_w_in`` and
``shared_w_out``; Qwen2-MoE's ``shared_expert_gate`` is ``nn.Linear(H, 1, bias=False)``, copied to
``shared_gate_weight [1, H]``.

Not represented: Mixtral's multiplicative ``router_jitter_noise`` (training only; an error when
non-zero), and the model-level choices of which layers are sparse (``decoder_sparse_step``,
``mlp_only_layers``, ``first_k_dense_replace``), which belong to the converter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nashmoe.moe.config import MoEConfig

__all__ = ["FAMILIES", "FamilyLayout", "family_config", "from_hf_block", "load_hf_block"]


@dataclass(frozen=True)
class FamilyLayout:
    """Where a family's sparse block keeps each tensor (attribute paths from the block).

    Attributes:
        block: the transformers 5 class of the sparse block.
        router: the router's ``weight [E, H]``.
        selection_bias: the router's selection-only bias buffer ``[E]`` (None: none).
        gate_up: fused ``[E, 2I, H]``, [out, in], gate rows first then up rows (concatenated).
        down: fused ``[E, H, I]``, [out, in].
        shared: the shared-expert MLP module (``gate_proj``, ``up_proj``, ``down_proj``
            ``nn.Linear`` without bias), or None.
        shared_gate: ``nn.Linear(H, 1, bias=False)`` gating the shared output by a sigmoid,
            or None.
        num_experts, expert_width: the config attributes giving E and I.
    """

    block: str
    router: str
    selection_bias: str | None
    gate_up: str
    down: str
    shared: str | None
    shared_gate: str | None
    num_experts: str
    expert_width: str


FAMILIES: dict[str, FamilyLayout] = {
    "mixtral": FamilyLayout(
        block="MixtralSparseMoeBlock",
        router="gate.weight",
        selection_bias=None,
        gate_up="experts.gate_up_proj",
        down="experts.down_proj",
        shared=None,
        shared_gate=None,
        num_experts="num_local_experts",
        expert_width="intermediate_size",
    ),
    "qwen2_moe": FamilyLayout(
        block="Qwen2MoeSparseMoeBlock",
        router="gate.weight",
        selection_bias=None,
        gate_up="experts.gate_up_proj",
        down="experts.down_proj",
        shared="shared_expert",
        shared_gate="shared_expert_gate",
        num_experts="num_experts",
        expert_width="moe_intermediate_size",
    ),
    "qwen3_moe": FamilyLayout(
        block="Qwen3MoeSparseMoeBlock",
        router="gate.weight",
        selection_bias=None,
        gate_up="experts.gate_up_proj",
        down="experts.down_proj",
        shared=None,
        shared_gate=None,
        num_experts="num_experts",
        expert_width="moe_intermediate_size",
    ),
    "olmoe": FamilyLayout(
        block="OlmoeSparseMoeBlock",
        router="gate.weight",
        selection_bias=None,
        gate_up="experts.gate_up_proj",
        down="experts.down_proj",
        shared=None,
        shared_gate=None,
        num_experts="num_experts",
        expert_width="intermediate_size",
    ),
    "deepseek_v3": FamilyLayout(
        block="DeepseekV3MoE",
        router="gate.weight",
        selection_bias="gate.e_score_correction_bias",
        gate_up="experts.gate_up_proj",
        down="experts.down_proj",
        shared="shared_experts",
        shared_gate=None,
        num_experts="n_routed_experts",
        expert_width="moe_intermediate_size",
    ),
}
"""The layout of every supported family (transformers 5)."""

_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}


def _layout(family: str) -> FamilyLayout:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[family]


def family_config(family: str, hf_config, *, method: str = "smoe", **overrides) -> MoEConfig:
    """The :class:`MoEConfig` reproducing ``family``'s sparse block for ``hf_config`` (a
    transformers config object, e.g. ``MixtralConfig``).

    With ``method="smoe"`` (default) the layer computes what the block computes. Other methods
    keep the shapes, activation and shared experts (the routing options are ``smoe``'s).
    ``overrides`` replace any field. The balance loss follows transformers' convention
    (``balance_loss_scale="transformers"``, ``balance_coef = router_aux_loss_coef``, the loss the
    HF model adds when ``output_router_logits=True``) where the family defines one, and is off
    (``balance_coef=0``) for DeepSeek-V3, which balances by its selection bias.
    """
    layout = _layout(family)
    c = hf_config
    act = getattr(c, "hidden_act", "silu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"hidden_act {act!r} of {family} has no equivalent here")
    if float(getattr(c, "router_jitter_noise", 0.0) or 0.0) > 0:
        raise ValueError(
            "router_jitter_noise > 0 (Mixtral's multiplicative input jitter) is not supported"
        )
    fields: dict = dict(
        method=method,
        d_model=c.hidden_size,
        d_ff=getattr(c, layout.expert_width),
        num_experts=getattr(c, layout.num_experts),
        activation=_ACTIVATIONS[act],
        glu=True,
        bias=False,
        z_loss_coef=0.0,
    )
    coef = getattr(c, "router_aux_loss_coef", None)
    if coef is not None:  # what XxxForCausalLM adds with output_router_logits=True
        fields.update(balance_coef=float(coef), balance_loss_scale="transformers")
    else:  # DeepSeek-V3: no auxiliary loss in transformers (aux-loss-free balancing instead)
        fields["balance_coef"] = 0.0
    if method == "smoe":
        fields["top_k"] = c.num_experts_per_tok
        if family == "mixtral":
            fields["norm_topk"] = True
        else:
            fields["norm_topk"] = bool(c.norm_topk_prob)
    if family == "qwen2_moe":
        fields.update(
            shared_experts=1, shared_d_ff=c.shared_expert_intermediate_size, shared_gate=True
        )
    if family == "deepseek_v3":
        fields.update(shared_experts=c.n_shared_experts, shared_d_ff=c.moe_intermediate_size)
        if method == "smoe":
            fields.update(
                score_func="sigmoid",
                routed_scaling=float(c.routed_scaling_factor),
                n_group=c.n_group,
                topk_group=c.topk_group,
                bias_balancing=True,
            )
    fields.update(overrides)
    return MoEConfig(**fields)


def _get(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _check(name: str, tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(
            f"{name}: expected shape {shape} from the config, got {tuple(tensor.shape)}"
        )


@torch.no_grad()
def load_hf_block(layer, hf_block: nn.Module, family: str) -> None:
    """Copy the weights of a transformers 5 sparse block of ``family`` into ``layer`` (a
    :class:`~nashmoe.moe.MoEFeedForward` built from :func:`family_config`). Shapes are checked
    against the layer's config; orientation and packing come from :data:`FAMILIES`."""
    layout = _layout(family)
    if type(hf_block).__name__ != layout.block:
        raise ValueError(f"expected a {layout.block} for family {family!r}, got {type(hf_block)}")
    cfg = layer.config
    n, d, f = cfg.num_experts, cfg.d_model, cfg.d_ff
    if not cfg.glu or cfg.bias:
        raise ValueError("the families' experts are gated (glu=True) and have no biases")
    router = _get(hf_block, layout.router)
    _check(layout.router, router, (n, d))
    layer.router.copy_(router)
    gate_up = _get(hf_block, layout.gate_up)
    _check(layout.gate_up, gate_up, (n, 2 * f, d))
    layer.w_gate.copy_(gate_up[:, :f])  # rows [0, I): gate
    layer.w_in.copy_(gate_up[:, f:])  # rows [I, 2I): up
    down = _get(hf_block, layout.down)
    _check(layout.down, down, (n, d, f))
    layer.w_out.copy_(down)
    if layout.selection_bias is not None and hasattr(layer, "expert_bias"):
        bias = _get(hf_block, layout.selection_bias)
        _check(layout.selection_bias, bias, (n,))
        layer.expert_bias.copy_(bias)
        layer.expert_load.zero_()
    if layout.shared is not None:
        if not cfg.shared_experts:
            raise ValueError(f"family {family!r} has shared experts: set shared_experts")
        shared = _get(hf_block, layout.shared)
        width = cfg.shared_experts * cfg.shared_d_ff
        for ours, theirs, shape in (
            ("shared_w_gate", "gate_proj", (width, d)),
            ("shared_w_in", "up_proj", (width, d)),
            ("shared_w_out", "down_proj", (d, width)),
        ):
            w = getattr(shared, theirs).weight
            _check(f"{layout.shared}.{theirs}.weight", w, shape)
            getattr(layer, ours).copy_(w)
    if layout.shared_gate is not None:
        gate = _get(hf_block, layout.shared_gate).weight
        _check(f"{layout.shared_gate}.weight", gate, (1, d))
        layer.shared_gate_weight.copy_(gate)
    layer.clear_cache()


def from_hf_block(hf_block: nn.Module, family: str, hf_config, **overrides):
    """A :class:`~nashmoe.moe.MoEFeedForward` computing what ``hf_block`` computes (``smoe``
    with the family's routing), with its weights, in the block's dtype and device."""
    from nashmoe.moe.layer import MoEFeedForward

    layer = MoEFeedForward(family_config(family, hf_config, **overrides))
    p = _get(hf_block, _layout(family).gate_up)
    layer.to(device=p.device, dtype=p.dtype)
    if hasattr(layer, "expert_bias"):  # kept in float32 like HF's e_score_correction_bias
        layer.expert_bias.data = layer.expert_bias.data.float()
        layer.expert_load.data = layer.expert_load.data.float()
    load_hf_block(layer, hf_block, family)
    return layer
