"""The propagation state threaded from one MoE layer to the next (spec section 2).

EP-CAMEx and NAMEx propagate the base expert: E_m^{(l+1)} = E_m^{(l)} + γ ΔE^{(l)} (plus complex
momentum for the -mom variants). Only the first MoE layer owns E_m^{(1)} as a parameter; every later
base expert is computed in the forward pass, so gradients flow through the propagation.

Two ways to thread the state:

- explicitly (our models): ``out, aux = layer(x, state=state, return_aux=True); state = aux.state``;
- implicitly, for third-party models whose blocks cannot pass extra arguments (Hugging Face):
  :func:`nashmoe.moe.link_moe_layers` (in :mod:`nashmoe.moe.chain`, above the layer) attaches one
  :class:`~nashmoe.moe.PropagationChain` to every MoE layer of a model.

This module only defines the state (no import of the layer), so the layer, :mod:`.aux` and
:mod:`.chain` import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.utils._pytree as pytree
from torch import Tensor

__all__ = ["PropagationState"]


@dataclass
class PropagationState:
    """What a propagating MoE layer hands to the next MoE layer.

    Attributes:
        base: the next layer's base expert E_m^{(l+1)}, ``{name: [*shape]}``.
        momentum_re, momentum_im: the complex momentum buffer μ (real and imaginary parts, same
            structure as ``base``; ``None`` without momentum). μ starts at 0 at the first MoE
            layer of every forward pass.
        alpha: the last Nash weights ``[N]`` (reused by layers that do not re-solve).
        status: the last solve's :class:`~nashmoe.bargaining.NashStatus` code (0-dim int64).
        residual: the last solve's relative residual (0-dim).
        layer: index of the next MoE layer in the chain (the first layer is 0).
        key: provenance of the state (parameter versions upstream), used by the inference cache.
    """

    base: dict[str, Tensor]
    momentum_re: dict[str, Tensor] | None = None
    momentum_im: dict[str, Tensor] | None = None
    alpha: Tensor | None = None
    status: Tensor | None = None
    residual: Tensor | None = None
    layer: int = 0
    key: tuple = field(default=(), repr=False)


_TENSOR_FIELDS = ("base", "momentum_re", "momentum_im", "alpha", "status", "residual")


def _flatten_state(state: PropagationState):
    return [getattr(state, f) for f in _TENSOR_FIELDS], (state.layer, state.key)


def _flatten_state_with_keys(state: PropagationState):
    children = [(pytree.GetAttrKey(f), getattr(state, f)) for f in _TENSOR_FIELDS]
    return children, (state.layer, state.key)


def _unflatten_state(values, context) -> PropagationState:
    layer, key = context
    return PropagationState(*values, layer=layer, key=key)


# A pytree node: its tensors (the propagated base expert, the momentum) are seen by pytree-based
# tools when a block returns the state, e.g. FSDP2's pre-backward hooks on a block's outputs and
# post-backward hooks on its inputs (per-block ``fully_shard``). ``layer`` and ``key`` are
# static context.
pytree.register_pytree_node(
    PropagationState,
    _flatten_state,
    _unflatten_state,
    serialized_type_name="nashmoe.moe.state.PropagationState",
    flatten_with_keys_fn=_flatten_state_with_keys,
)
