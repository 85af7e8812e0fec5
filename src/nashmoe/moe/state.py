"""The propagation state threaded from one MoE layer to the next (spec section 2).

EP-CAMEx and NAMEx propagate the base expert: E_m^{(l+1)} = E_m^{(l)} + γ ΔE^{(l)} (plus complex
momentum for the -mom variants). Only the first MoE layer owns E_m^{(1)} as a parameter; every later
base expert is computed in the forward pass, so gradients flow through the propagation.

Two ways to thread the state:

- explicitly (our models): ``out, aux = layer(x, state=state, return_aux=True); state = aux.state``;
- implicitly, for third-party models whose blocks cannot pass extra arguments (Hugging Face):
  :func:`link_moe_layers` attaches one :class:`PropagationChain` to every MoE layer of a model; the
  first layer starts the chain and each layer hands the state to the next through it; a forward
  pre-hook on the model clears it at the start of every forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.utils._pytree as pytree
from torch import Tensor, nn

__all__ = ["PropagationChain", "PropagationState", "link_moe_layers"]


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


class PropagationChain:
    """Carries the propagation state between the MoE layers of one model during a forward pass.

    Create it with :func:`link_moe_layers`. Not compatible with activation checkpointing (a
    recomputed layer would read the state of a later layer); thread the state explicitly there.
    """

    def __init__(self) -> None:
        self.state: PropagationState | None = None
        self.layers: list[nn.Module] = []
        self._handle = None

    def reset(self) -> None:
        self.state = None

    def unlink(self) -> None:
        """Detach the chain from its layers and remove the model's pre-hook."""
        for layer in self.layers:
            if getattr(layer, "_chain", None) is self:
                layer._chain = None
        self.layers = []
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def link_moe_layers(model: nn.Module) -> PropagationChain:
    """Thread the propagation state through every :class:`~nashmoe.moe.MoEFeedForward` of
    ``model`` without changing how its blocks are called.

    The layers are taken in module-registration order, which must be the order in which the
    forward pass calls them. The first propagating layer must own the base expert
    (``owns_base=True``) and the others must not.

    Returns:
        The :class:`PropagationChain`; call ``chain.unlink()`` to undo.
    """
    from nashmoe.moe.layer import MoEFeedForward  # local import: layer imports this module

    layers = [m for m in model.modules() if isinstance(m, MoEFeedForward)]
    if not layers:
        raise ValueError("the model has no MoEFeedForward layer to link")
    propagating = [m for m in layers if m.config.propagates]
    if propagating:
        owners = [i for i, m in enumerate(propagating) if m.owns_base]
        if owners != [0]:
            raise ValueError(
                "the first propagating MoE layer (in registration order) must own the base "
                f"expert and no other may; owners found at positions {owners}"
            )
    chain = PropagationChain()
    for layer in layers:
        if getattr(layer, "_chain", None) is not None:
            raise ValueError("a layer of this model is already linked to a chain; unlink it first")
        layer._chain = chain
    chain.layers = layers
    chain._handle = model.register_forward_pre_hook(lambda module, args: chain.reset())
    return chain
