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
