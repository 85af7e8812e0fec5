"""MoE modules placed inside Hugging Face models: the anchored layer of upcycled models and the
BERT intermediate block with sequence routing over the non-padding tokens."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from nashmoe.moe.layer import MoEFeedForward

__all__ = ["AnchoredMoEFeedForward", "MaskContext", "SequenceMoEIntermediate"]


class AnchoredMoEFeedForward(MoEFeedForward):
    """A propagating layer (EP-CAMEx, NAMEx*) whose base expert is anchored to its own weights.

    Plain propagation gives layer l the base ``E_m^(l) = E_m^(l-1) + γ ΔE^(l-1)``: every base
    derives from the first layer's. An upcycled model starts from a dense model whose feed-forward
    weights differ from layer to layer, so each layer here owns an *anchor* ``A_l`` (its dense
    weights; the first layer's anchor is its base ``E_m^(1)``) and the chain carries the
    *displacement* ``D_l`` instead of the base:

        E_m^(l) = A_l + D_l,   D_1 = 0,   D_(l+1) = E_m^(l) + γ ΔE^(l) − A_l = D_l + γ ΔE^(l)

    (with momentum, ΔE^(l) is replaced by Re μ^(l) as usual). The step ΔE is the method's own
    (mean of the curved domain vectors, or the Nash direction Σ α_i τ_i). At upcycling with no
    noise every τ_i = 0, so ΔE = 0 whatever the Nash weights (the solver reports DEGENERATE and
    falls back to uniform α; 0 · α = 0), every D_l = 0 and every base is its layer's dense FFN.
    """

    def __init__(self, config=None, *, owns_base: bool = True, **kwargs) -> None:
        super().__init__(config, owns_base=owns_base, **kwargs)
        if self.config.propagates and not self.owns_base:
            for name, shape in self.layout.shapes.items():
                self.register_parameter("anchor_" + name, nn.Parameter(torch.zeros(*shape)))

    def anchor_tensors(self) -> dict[str, Tensor] | None:
        """This layer's anchor ``A_l`` (the base itself for the first layer)."""
        if not self.config.propagates:
            return None
        prefix = "base_" if self.owns_base else "anchor_"
        return {name: getattr(self, prefix + name) for name in self.layout.names}

    def _compute_parameter_part(
        self, incoming, reuse_solve: bool = False, defer_direction: bool = False
    ):
        anchor = self.anchor_tensors()
        if anchor is None:
            return super()._compute_parameter_part(incoming, reuse_solve, defer_direction)
        if incoming is not None and not self.owns_base:  # displacement -> this layer's base
            incoming = replace(
                incoming, base={n: anchor[n] + incoming.base[n] for n in self.layout.names}
            )
        part = super()._compute_parameter_part(incoming, reuse_solve, defer_direction)

        def to_displacement() -> None:  # the next base -> the displacement passed on
            if part.next_state is not None and part.next_state is not incoming:
                nxt = part.next_state
                part.next_state = replace(
                    nxt, base={n: nxt.base[n] - anchor[n] for n in self.layout.names}
                )

        if part.finish is None:
            to_displacement()
        else:  # the merge forms the direction: the next state is final after finish
            finish = part.finish

            def finish_then_shift(delta: dict[str, Tensor]) -> None:
                finish(delta)
                to_displacement()

            part.finish = finish_then_shift
        return part


class MaskContext:
    """The 2-D attention mask of the current model call, for sequence routing.

    A forward pre-hook on the top model (see :func:`install_mask_hook`) stores the call's
    ``attention_mask`` (``[batch, seq]``, 1 = token, 0 = padding; None = no padding) before the
    encoder runs, because BERT's layers only receive the expanded 4-D additive mask (or none
    at all with SDPA and no padding).
    """

    def __init__(self) -> None:
        self.mask: Tensor | None = None

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:  # model(input_ids, attention_mask)
            mask = args[1]
        self.mask = mask if isinstance(mask, Tensor) and mask.ndim == 2 else None


def install_mask_hook(model: nn.Module, context: MaskContext):
    return model.register_forward_pre_hook(context.pre_forward, with_kwargs=True)


class SequenceMoEIntermediate(nn.Module):
    """Replaces ``BertLayer.intermediate``: the whole FFN (up, activation, down, biases) as one
    :class:`MoEFeedForward`; ``BertOutput.dense`` becomes an identity, so ``BertOutput`` still
    applies its dropout, the residual and the LayerNorm. With ``unit="sequence"`` the layer
    routes each sequence by the mean of its non-padding tokens (mask from :class:`MaskContext`);
    ``smoe`` gets the mask too, so that padding stays out of its router losses and load counts.
    """

    def __init__(self, moe: MoEFeedForward, context: MaskContext | None) -> None:
        super().__init__()
        self.moe = moe
        self._context = context

    def forward(self, hidden_states: Tensor) -> Tensor:
        cfg = self.moe.config
        mask = None
        routes_by_mask = cfg.method == "smoe" or (cfg.is_merging and cfg.unit == "sequence")
        if routes_by_mask and self._context is not None:
            mask = self._context.mask
            if mask is not None:
                if mask.shape != hidden_states.shape[:2]:
                    raise ValueError(
                        f"attention_mask of shape {tuple(mask.shape)} does not match the hidden "
                        f"states {tuple(hidden_states.shape[:2])} (chunked feed-forward is not "
                        "supported with sequence routing or smoe)"
                    )
                mask = mask.to(hidden_states.device)
        return self.moe(hidden_states, attention_mask=mask)
