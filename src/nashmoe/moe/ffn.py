"""Feed-forward kernels: one expert, per-unit merged experts, token mixing and top-k dispatch.

All of them are loop-free over tokens, units and experts:

- :func:`dense_ffn`: one expert applied to every token.
- :func:`merged_ffn`: one merged expert per routing unit, applied with batched matrix products
  (the merged weights ``[U, P]`` come from one matrix product ``[U, N] × [N, P]``, spec section 5).
- :func:`mixed_ffn`: per-token merging without materialising per-token weights: a merged linear map
  applied to x equals the score-weighted sum of the experts' maps applied to x, so
  ``(B + Σ_i c_i V_i) x = B x + Σ_i c_i (V_i x)`` (N times the dense cost, no U·P memory).
- :func:`topk_ffn`: sparse top-k dispatch (sort, per-expert counts, a padded batched product,
  index_add).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["activation_fn", "dense_ffn", "merged_ffn", "mixed_ffn", "topk_ffn"]


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name == "silu":
        return F.silu
    raise ValueError(f"unknown activation {name!r}")


def _hidden(pre: Tensor, gate: Tensor | None, act: Callable[[Tensor], Tensor]) -> Tensor:
    return act(pre) if gate is None else act(gate) * pre


def dense_ffn(x: Tensor, w: dict[str, Tensor], act: Callable[[Tensor], Tensor]) -> Tensor:
    """One expert ``{w_in [f, d], w_gate?, w_out [d, f], b_in?, b_out?}`` on ``x [..., d]``."""
    pre = F.linear(x, w["w_in"], w.get("b_in"))
    gate = F.linear(x, w["w_gate"]) if "w_gate" in w else None
    return F.linear(_hidden(pre, gate, act), w["w_out"], w.get("b_out"))


def merged_ffn(x: Tensor, w: dict[str, Tensor], act: Callable[[Tensor], Tensor]) -> Tensor:
    """Per-unit experts ``{w_in [U, f, d], ...}`` on the unit's tokens ``x [U, T, d]``."""
    w_in = w["w_in"].transpose(1, 2)
    pre = torch.baddbmm(w["b_in"][:, None], x, w_in) if "b_in" in w else torch.bmm(x, w_in)
    gate = torch.bmm(x, w["w_gate"].transpose(1, 2)) if "w_gate" in w else None
    h = _hidden(pre, gate, act)
    w_out = w["w_out"].transpose(1, 2)
    return torch.baddbmm(w["b_out"][:, None], h, w_out) if "b_out" in w else torch.bmm(h, w_out)


def _mix_linear(
    x: Tensor, coeff: Tensor, base: Tensor | None, vectors: Tensor, bias_base, bias_vectors
) -> Tensor:
    """``(B + Σ_i c_i V_i) x + (b_B + Σ_i c_i b_i)`` for ``x [M, i]``, ``coeff [M, N]``,
    ``vectors [N, o, i]``: one product with all experts stacked, then a weighted sum."""
    n, o, _ = vectors.shape
    per_expert = (x @ vectors.reshape(n * o, -1).T).view(-1, n, o)  # [M, N, o]
    y = torch.bmm(coeff[:, None, :].to(per_expert.dtype), per_expert)[:, 0]
    if base is not None:
        y = y + x @ base.T
    if bias_vectors is not None:
        y = y + coeff.to(bias_vectors.dtype) @ bias_vectors
    if bias_base is not None:
        y = y + bias_base
    return y


def mixed_ffn(
    x: Tensor,
    coeff: Tensor,
    base: dict[str, Tensor] | None,
    vectors: dict[str, Tensor],
    act: Callable[[Tensor], Tensor],
) -> Tensor:
    """Per-token merged experts ``B + Σ_i c_i V_i`` applied to ``x [M, d]`` with ``coeff [M, N]``,
    without materialising per-token weights."""

    def lin(name: str, bias: str, inp: Tensor) -> Tensor:
        return _mix_linear(
            inp,
            coeff,
            None if base is None else base[name],
            vectors[name],
            None if base is None else base.get(bias),
            vectors.get(bias),
        )

    pre = lin("w_in", "b_in", x)
    gate = lin("w_gate", "", x) if "w_gate" in vectors else None
    return lin("w_out", "b_out", _hidden(pre, gate, act))


def topk_ffn(
    x: Tensor,
    experts: dict[str, Tensor],
    top_idx: Tensor,
    top_w: Tensor,
    act: Callable[[Tensor], Tensor],
) -> Tensor:
    """Sparse top-k MoE on tokens ``x [M, d]``: ``y_t = Σ_j top_w[t, j] f(x_t; E_{top_idx[t, j]})``.

    Index-based dispatch: assignments are sorted by expert, each expert's tokens are gathered into
    a padded buffer ``[N, C, d]``, all experts run as one batched product, and the weighted
    results are scattered back with ``index_add_``. C is the largest expert load in CPU eager
    mode, and the static bound M (every token on one expert) on CUDA and under
    ``torch.compile``, so that the forward never synchronises with the host (at the cost of
    N/k times the sparse FLOPs there; a capacity-factor dispatch would be the faster
    alternative).
    """
    m, d = x.shape
    n = experts["w_in"].shape[0]
    k = top_idx.shape[1]
    flat_expert = top_idx.reshape(-1)
    order = torch.argsort(flat_expert, stable=True)
    sorted_expert = flat_expert[order]
    token = torch.div(order, k, rounding_mode="floor")
    counts = torch.zeros(n, dtype=torch.long, device=x.device)
    counts.scatter_add_(0, flat_expert, torch.ones_like(flat_expert))
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(m * k, device=x.device) - starts[sorted_expert]
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        capacity = int(counts.max()) if m else 0  # free on the CPU: pad to the largest load
    else:  # no host synchronisation: the static worst case (top-k experts are distinct)
        capacity = m
    buffer = x.new_zeros(n, max(capacity, 1), d)
    buffer[sorted_expert, slot] = x[token]
    y_buf = merged_ffn(buffer, experts, act)
    y = y_buf[sorted_expert, slot] * top_w.reshape(-1)[order, None].to(y_buf.dtype)
    return torch.zeros(m, d, dtype=y.dtype, device=x.device).index_add_(0, token, y)
