"""Let a :class:`~nashmoe.moe.MoEFeedForward` stand in for the MLP of a third-party block.

Hugging Face blocks call their MLP with the hidden states only (``GPT2MLP.forward(hidden_states)``,
``LlamaMLP.forward(x)``, ...) and expect a tensor of the same shape back. :class:`MoEMLP` gives a
MoE layer exactly that call signature; :func:`~nashmoe.moe.link_moe_layers` then threads the
propagation state and the decoding caches through the model without touching its forward.
"""

from __future__ import annotations

from torch import Tensor, nn

from nashmoe.moe.layer import MoEFeedForward

__all__ = ["MoEMLP"]


class MoEMLP(nn.Module):
    """A :class:`MoEFeedForward` behind the call signature of a Hugging Face MLP.

    ``forward(hidden_states, *args, **kwargs) -> Tensor``: extra arguments are accepted and
    ignored; any number of leading dimensions is accepted (``[..., seq, hidden]``; a 2-D input
    ``[tokens, hidden]`` is one sequence, as segment routing needs the token order); the output
    has the input's shape. The layer's losses and diagnostics are in ``mlp.moe.last_aux``
    (gather them over a model with :func:`~nashmoe.moe.collect_aux`; add ``aux.loss`` to the
    training loss).

    Args:
        moe: the layer.
        dropout: dropout on the output, as GPT-2's MLP applies (``config.resid_pdrop``).

    Example (a transformers GPT-2 whose MLPs become NAMEx layers)::

        cfg = MoEConfig(method="namex", d_model=768, d_ff=3072, activation="gelu_tanh")
        for i, block in enumerate(model.transformer.h):
            block.mlp = MoEMLP(MoEFeedForward(cfg, owns_base=(i == 0)))
        chain = link_moe_layers(model)  # state, checkpointing and cached decoding
    """

    def __init__(self, moe: MoEFeedForward, *, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(moe, MoEFeedForward):
            raise TypeError(f"expected a MoEFeedForward, got {type(moe).__name__}")
        self.moe = moe
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        shape = hidden_states.shape
        if hidden_states.ndim < 2:
            raise ValueError(f"expected [..., seq, hidden], got {tuple(shape)}")
        x = hidden_states.reshape(-1, *shape[-2:]) if hidden_states.ndim != 3 else hidden_states
        return self.dropout(self.moe(x)).reshape(shape)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout.p}" if self.dropout.p else ""
