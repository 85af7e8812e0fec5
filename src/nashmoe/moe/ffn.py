"""Feed-forward kernels: one expert, per-unit merged experts, token mixing and top-k dispatch.

All of them are loop-free over tokens, units and experts:

- :func:`dense_ffn`: one expert applied to every token.
- :func:`merged_ffn`: one merged expert per routing unit, applied with batched matrix products
  (the merged weights ``[U, P]`` come from one matrix product ``[U, N] × [N, P]``, spec section 5).
- :func:`mixed_ffn`: per-token merging without materialising per-token weights: a merged linear map
  applied to x equals the score-weighted sum of the experts' maps applied to x, so
  ``(B + Σ_i c_i V_i) x = B x + Σ_i c_i (V_i x)`` (N times the dense cost, no U·P memory).
- :func:`topk_ffn`: sparse top-k dispatch: assignments sorted by expert, one grouped matrix
  product per weight over the sorted tokens (``torch._grouped_mm``, no padding, no host
  synchronisation), index_add; a padded batched product where grouped products are unsupported.
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


def _grouped_mm_ok(x: Tensor, experts: dict[str, Tensor]) -> bool:
    """Whether ``torch._grouped_mm`` can run this dispatch: float32/bf16/fp16 operands (float64
    is not supported), rows 16-byte aligned (d and f multiples of 16 bytes), and a device whose
    build supports it (CPU here; CUDA needs sm90+, where bf16 is the supported dtype); under
    ``torch.compile`` bf16 only (the op's fake kernel rejects float32)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if torch.compiler.is_compiling() and x.dtype != torch.bfloat16:
        return False  # the op's fake (meta) kernel accepts bf16 only (torch 2.13)
    if x.device.type == "cuda":
        if x.dtype == torch.float32 or torch.cuda.get_device_capability(x.device) < (9, 0):
            return False
    elif x.device.type != "cpu":
        return False
    size = x.element_size()
    w_in = experts["w_in"]
    return (w_in.shape[1] * size) % 16 == 0 and (w_in.shape[2] * size) % 16 == 0


# Hidden activations per grouped product on the CPU: glibc serves allocations of 32 MiB and more
# with fresh mmap'd pages, and faulting them in costs about 15 ms per 32 MiB on this machine
# (measured: a fresh 33 MiB tensor filled 4 at a time, 49 ms; 31 MiB, 6.5 ms). Top-2 of 4,096
# tokens at f = 1024 makes [8192, 1024] float32 activations (exactly 32 MiB) and their
# gradients; rows are therefore processed in ranges of at most this many bytes of [rows, f].
_GROUPED_ROW_BYTES = 16 * 2**20


def _row_chunk(rows: int, hidden: int, element_size: int, device: str) -> int:
    """Rows per grouped product: all of them off the CPU and under ``torch.compile``, else at
    most ``_GROUPED_ROW_BYTES`` of hidden activations (a multiple of 16 rows)."""
    if device != "cpu" or torch.compiler.is_compiling():
        return max(rows, 1)
    limit = max(16, (_GROUPED_ROW_BYTES // max(hidden * element_size, 1)) // 16 * 16)
    return max(1, min(rows, limit))


def _grouped(a: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """``a [M, in]`` (rows sorted by group) times ``w[g]ᵀ`` for ``w [G, out, in]``."""
    return torch._grouped_mm(a, w.transpose(1, 2), offs=offs)


def topk_ffn(
    x: Tensor,
    experts: dict[str, Tensor],
    top_idx: Tensor,
    top_w: Tensor,
    act: Callable[[Tensor], Tensor],
    *,
    grouped: bool | None = None,
) -> Tensor:
    """Sparse top-k MoE on tokens ``x [M, d]``: ``y_t = Σ_j top_w[t, j] f(x_t; E_{top_idx[t, j]})``.

    Index-based dispatch: the M·k assignments are sorted by expert (a stable argsort), the tokens
    gathered in that order, and every weight applied with one grouped matrix product over the
    sorted rows (``torch._grouped_mm`` with the per-expert cumulative counts as offsets): exactly
    the sparse FLOPs (k times dense), no padding to the largest load and no host
    synchronisation (the counts stay on the device). The weighted results are scattered back
    with ``index_add_``.

    Fallback (``grouped=False``, or when grouped products are unsupported: float64, rows not
    16-byte aligned, CUDA below sm90 or float32 on CUDA, anything but bf16 under
    ``torch.compile``, whose fake kernel for the op takes bf16 only): a padded buffer
    ``[N, C, d]`` and one batched product; C is the largest load in CPU eager mode (one host
    synchronisation) and the static bound M on CUDA and under ``torch.compile`` (no
    synchronisation, N/k times the sparse FLOPs).
    """
    m, d = x.shape
    n = experts["w_in"].shape[0]
    k = top_idx.shape[1]
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    if grouped is None:
        grouped = _grouped_mm_ok(x.new_empty(0, dtype=dtype), experts)
    flat_expert = top_idx.reshape(-1)
    order = torch.argsort(flat_expert, stable=True)
    sorted_expert = flat_expert[order]
    token = torch.div(order, k, rounding_mode="floor")
    counts = torch.zeros(n, dtype=torch.long, device=x.device)
    counts.scatter_add_(0, flat_expert, torch.ones_like(flat_expert))
    weight = top_w.reshape(-1)[order, None]
    if grouped:
        offs = torch.cumsum(counts, 0).to(torch.int32)
        xs = x[token].to(dtype)  # under autocast: the autocast dtype (no autocast rule for it)
        w = {name: t.to(dtype) for name, t in experts.items()}
        rows = _row_chunk(m * k, w["w_in"].shape[1], xs.element_size(), x.device.type)
        out = torch.zeros(m, d, dtype=dtype, device=x.device)
        for start in range(0, max(m * k, 1), rows):  # row ranges: offsets clamped, no host sync
            stop = min(m * k, start + rows)
            part_offs = offs if rows >= m * k else (offs - start).clamp(0, stop - start)
            xs_part, idx = xs[start:stop], sorted_expert[start:stop]
            pre = _grouped(xs_part, w["w_in"], part_offs)
            if "b_in" in w:
                pre = pre + w["b_in"][idx]
            gate = _grouped(xs_part, w["w_gate"], part_offs) if "w_gate" in w else None
            y = _grouped(_hidden(pre, gate, act), w["w_out"], part_offs)
            if "b_out" in w:
                y = y + w["b_out"][idx]
            # weighted and scattered range by range (no concatenation of the ranges)
            out.index_add_(0, token[start:stop], y * weight[start:stop].to(y.dtype))
        return out
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(m * k, device=x.device) - starts[sorted_expert]
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        capacity = int(counts.max()) if m else 0  # free on the CPU: pad to the largest load
    else:  # no host synchronisation: the static worst case (top-k experts are distinct)
        capacity = m
    buffer = x.new_zeros(n, max(capacity, 1), d)
    buffer[sorted_expert, slot] = x[token]
    y_buf = merged_ffn(buffer, experts, act)
    y = y_buf[sorted_expert, slot] * weight.to(y_buf.dtype)
    return torch.zeros(m, d, dtype=y.dtype, device=x.device).index_add_(0, token, y)
