"""Merge-and-apply as one autograd function: per-unit experts without storing them.

For U routing units with T tokens each, the merged expert of unit u is, tensor by tensor,
``W_u = B + Σ_i c_{u,i} V_i`` (B the base expert or absent, V_i the merge vectors, c the
coefficients), built for all units with one matrix product ``[U, N] × [N, P_t]`` per tensor and
applied with batched matrix products (spec section 5). Letting autograd record this keeps every
``W_u`` (U·P numbers) and its views alive for the backward pass and zero-fills and copies gradient
slices; here the function saves what the dense FFN saves (inputs, pre-activations, hidden
activations) and the (small) merge operands, rebuilds the merged weights in the backward pass,
and writes each tensor's gradient directly, so the cost is the dense FFN's plus the
``[U, N] × [N, P]`` products. Units are processed in chunks bounded by ``max_chunk_bytes`` of
merged weights: memory stays bounded for any batch and each chunk's weights stay in cache.

The plain autograd version, :func:`nashmoe.moe.ffn.merged_ffn`, is the reference it is tested
against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["merge_and_apply"]

_MAX_CHUNK_BYTES = 16 * 2**20  # about 8 units of d=256, f=1024: merged weights stay in cache


def _act(name: str, x: Tensor) -> Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    if name == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {name!r}")


def _act_backward(name: str, grad: Tensor, x: Tensor) -> Tensor:
    if name == "gelu":
        return torch.ops.aten.gelu_backward(grad, x)
    if name == "gelu_tanh":
        return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")
    if name == "relu":
        return grad * (x > 0).to(grad.dtype)
    if name == "silu":
        return torch.ops.aten.silu_backward(grad, x)
    raise ValueError(f"unknown activation {name!r}")


def _merged(name_shapes, c, base, vectors, idx=None, beta=None):
    """Merged weights of a chunk of u units: ``{name: [u, *shape]}``.

    Dense: ``B + c @ V`` (``c [u, N]``). Sparse (``idx [u, k]``): only the k selected vectors
    of each unit are read, ``B + Σ_j c[:, j] V[idx[:, j]]`` (``c [u, k]``), one fused
    gather-and-weighted-sum (``embedding_bag``), so the cost is proportional to k, not N.
    With ``beta [u]`` the base is scaled per unit: ``beta_u B + ...``.
    """
    out = {}
    for (name, shape), b, v in zip(name_shapes, base, vectors):
        flat = v.reshape(v.shape[0], -1)
        if idx is None:
            w = c @ flat if b is None else torch.addmm(b.reshape(1, -1), c, flat)
        else:
            w = F.embedding_bag(idx, flat, per_sample_weights=c, mode="sum")
            if b is not None:
                b = b.reshape(1, -1)  # in place: the gather's output is a fresh tensor
                w = w.add_(b) if beta is None else w.addcmul_(beta[:, None], b)
        out[name] = w.view(c.shape[0], *shape)
    return out


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Gradients summed over chunks of units accumulate in float32 at least (bf16/fp16 would
    round every partial sum: 2 % relative error with one unit per chunk, measured)."""
    return torch.promote_types(dtype, torch.float32)


def _low_precision_products(x: Tensor) -> bool:
    """Whether the per-chunk merge-gradient products (``cᵀ dW``, ``dW Vᵀ``) run in the bf16/fp16
    compute dtype (on accelerators: tensor cores; each chunk's product is rounded once, then
    added to the float32 accumulator) rather than in float32 (on the CPU, where low-precision
    matrix products are not faster)."""
    return x.dtype != _accumulation_dtype(x.dtype) and x.device.type != "cpu"


class _MergeAndApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff, beta, index, activation, name_shapes, chunk, *operands):  # type: ignore[override]
        count = len(name_shapes)
        dtype = x.dtype  # the compute dtype; operands keep their storage dtype (cast per use)
        base_in, vectors_in = operands[:count], operands[count:]
        base = [None if b is None else b.to(dtype) for b in base_in]
        vectors = [v.to(dtype) for v in vectors_in]
        c_all = coeff.to(dtype)
        beta_all = None if beta is None else beta.to(dtype)
        units = x.shape[0]
        names = [n for n, _ in name_shapes]
        glu = "w_gate" in names
        pre_all, gate_all, h_all, y_all = [], [], [], []
        for start in range(0, units, chunk):
            stop = min(units, start + chunk)
            idx = None if index is None else index[start:stop]
            b_chunk = None if beta_all is None else beta_all[start:stop]
            w = _merged(name_shapes, c_all[start:stop], base, vectors, idx, b_chunk)
            xs = x[start:stop]
            pre = torch.bmm(xs, w["w_in"].transpose(1, 2))
            if "b_in" in w:
                pre = pre + w["b_in"][:, None]
            gate = torch.bmm(xs, w["w_gate"].transpose(1, 2)) if glu else None
            h = _act(activation, gate) * pre if glu else _act(activation, pre)
            y = torch.bmm(h, w["w_out"].transpose(1, 2))
            if "b_out" in w:
                y = y + w["b_out"][:, None]
            pre_all.append(pre)
            gate_all.append(gate)
            h_all.append(h)
            y_all.append(y)

        def joined(parts):
            return torch.cat(parts) if len(parts) > 1 else parts[0]

        pre, h = joined(pre_all), joined(h_all)
        gate = joined(gate_all) if glu else None
        ctx.activation, ctx.name_shapes, ctx.chunk, ctx.glu = activation, name_shapes, chunk, glu
        ctx.has_base = [b is not None for b in base_in]
        ctx.has_index, ctx.has_beta = index is not None, beta is not None
        saved = [x, coeff, pre, gate if glu else pre, h, index if index is not None else pre]
        saved.append(beta if beta is not None else pre)
        saved += [b if b is not None else pre for b in base_in]
        saved += list(vectors_in)
        ctx.save_for_backward(*saved)
        return torch.cat(y_all) if len(y_all) > 1 else y_all[0]

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        saved = ctx.saved_tensors
        name_shapes, count = ctx.name_shapes, len(ctx.name_shapes)
        x, coeff_in, pre_all, gate_all, h_all, index, beta_in = saved[:7]
        index = index if ctx.has_index else None
        beta_in = beta_in if ctx.has_beta else None
        base_in = [b if has else None for b, has in zip(saved[7 : 7 + count], ctx.has_base)]
        vectors_in = saved[7 + count :]
        dtype = x.dtype
        acc = _accumulation_dtype(dtype)
        base = [None if b is None else b.to(dtype) for b in base_in]
        vectors = [v.to(dtype) for v in vectors_in]
        coeff = coeff_in.to(dtype)
        glu, act = ctx.glu, ctx.activation
        grad_y = grad_y.to(dtype)
        low_precision = _low_precision_products(x)
        need_x, need_coeff = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_beta = ctx.has_beta and ctx.needs_input_grad[2]
        beta = None if beta_in is None else beta_in.to(dtype)
        grad_beta = torch.zeros(beta.shape, dtype=acc, device=x.device) if need_beta else None
        units = x.shape[0]
        grad_x = torch.empty_like(x) if need_x else None
        grad_coeff = torch.zeros(coeff.shape, dtype=acc, device=x.device) if need_coeff else None
        grad_base = [
            None if b is None else torch.zeros(b.numel(), dtype=acc, device=b.device)
            for b in base_in
        ]
        grad_vec = [
            torch.zeros(v.shape[0], v[0].numel(), dtype=acc, device=v.device) for v in vectors_in
        ]
        for start in range(0, units, ctx.chunk):
            stop = min(units, start + ctx.chunk)
            idx = None if index is None else index[start:stop]
            sparse_coeff_grad = idx is not None and need_coeff
            c_chunk = coeff[start:stop]
            if sparse_coeff_grad:  # d coeff through the gather's own backward (no [u, k, P])
                c_chunk = c_chunk.detach().requires_grad_(True)
            with torch.set_grad_enabled(sparse_coeff_grad):
                b_chunk = None if beta is None else beta[start:stop]
                w_graph = _merged(name_shapes, c_chunk, base, vectors, idx, b_chunk)
            w = {name: t.detach() for name, t in w_graph.items()}
            xs, dy = x[start:stop], grad_y[start:stop]
            pre = pre_all[start:stop]
            gate = gate_all[start:stop] if glu else None
            h = h_all[start:stop]
            grads = {}
            grads["w_out"] = torch.bmm(dy.transpose(1, 2), h)
            if "b_out" in w:
                grads["b_out"] = dy.sum(dim=1)
            dh = torch.bmm(dy, w["w_out"])
            if glu:
                dpre = dh * _act(act, gate)
                dgate = _act_backward(act, dh * pre, gate)
                grads["w_gate"] = torch.bmm(dgate.transpose(1, 2), xs)
            else:
                dpre = _act_backward(act, dh, pre)
            grads["w_in"] = torch.bmm(dpre.transpose(1, 2), xs)
            if "b_in" in w:
                grads["b_in"] = dpre.sum(dim=1)
            if need_x:
                dx = torch.bmm(dpre, w["w_in"])
                if glu:
                    dx = dx.baddbmm_(dgate, w["w_gate"])
                grad_x[start:stop] = dx
            c = coeff[start:stop].to(acc)
            if sparse_coeff_grad:
                grad_coeff[start:stop] += torch.autograd.grad(
                    list(w_graph.values()), c_chunk, [grads[name] for name, _ in name_shapes]
                )[0].to(acc)
            for k, (name, _) in enumerate(name_shapes):
                flat = vectors[k].reshape(vectors[k].shape[0], -1)
                g_low = grads[name].reshape(stop - start, -1)
                g = g_low.to(acc)
                if idx is not None:  # only the k selected vectors of each unit get a gradient
                    for j in range(idx.shape[1]):
                        grad_vec[k].index_add_(0, idx[:, j], g * c[:, j : j + 1])
                elif low_precision:  # products in the compute dtype, each rounded once
                    if need_coeff:
                        grad_coeff[start:stop] += g_low @ flat.T
                    grad_vec[k] += coeff[start:stop].T @ g_low
                else:
                    if need_coeff:
                        grad_coeff[start:stop].addmm_(g, flat.T.to(acc))
                    grad_vec[k].addmm_(c.T, g)
                if grad_base[k] is not None:
                    if beta is None:
                        grad_base[k] += g.sum(dim=0)
                    else:  # B scaled by beta_u per unit
                        b_acc = beta[start:stop].to(acc)
                        grad_base[k].addmv_(g.T, b_acc)
                        if need_beta:
                            grad_beta[start:stop] += g @ base[k].reshape(-1).to(acc)
        grad_base = [
            None if g is None else g.view(b.shape).to(b.dtype) for g, b in zip(grad_base, base_in)
        ]
        grad_vec = [g.view(v.shape).to(v.dtype) for g, v in zip(grad_vec, vectors_in)]
        if grad_coeff is not None:
            grad_coeff = grad_coeff.to(coeff_in.dtype)
        if grad_beta is not None:
            grad_beta = grad_beta.to(beta_in.dtype)
        return (grad_x, grad_coeff, grad_beta, None, None, None, None, *grad_base, *grad_vec)


def merge_and_apply(
    x: Tensor,
    coeff: Tensor,
    base: dict[str, Tensor] | None,
    vectors: dict[str, Tensor],
    *,
    activation: str,
    max_chunk_bytes: int | None = None,
    index: Tensor | None = None,
    base_coeff: Tensor | None = None,
) -> Tensor:
    """Apply the merged expert ``B + Σ_i coeff[u, i] V_i`` of every unit to its tokens.

    Args:
        x: tokens of each unit ``[U, T, d]``.
        coeff: merge coefficients ``[U, N]`` (dense), or ``[U, k]`` with ``index``.
        base: the base expert ``{name: [*shape]}`` (None: no base, as SMEAR).
        vectors: the merge vectors ``{name: [N, *shape]}`` in layout order
            (``w_in``, ``w_gate``?, ``w_out``, ``b_in``?, ``b_out``?).
        activation: ``gelu``, ``gelu_tanh``, ``relu`` or ``silu``.
        max_chunk_bytes: bound on the merged weights held at once (units are chunked).
        index: ``[U, k]`` (sparse merge, ``merge_top_k``): unit u merges only the vectors
            ``index[u]`` with coefficients ``coeff[u]``; they are gathered per unit, so the merge
            costs U·k·P instead of U·N·P, and only the selected vectors receive gradients.
        base_coeff: ``[U]`` (with ``index`` only): the base is scaled per unit,
            ``base_coeff[u] B + Σ_j coeff[u, j] V[index[u, j]]``. With ``V = E`` (the raw
            experts) and ``base_coeff = 1 − Σ_j coeff[u, j]`` this is ``B + Σ_j coeff (E − B)``
            without forming the N domain vectors ``E_i − B``.

    Returns:
        ``[U, T, d]``. Under autocast the computation runs in the autocast dtype; the base,
        vectors and coefficients keep their own dtype and their gradients, summed over chunks of
        units, accumulate in float32 at least.
    """
    if base_coeff is not None and (index is None or base is None):
        raise ValueError("base_coeff needs index (a sparse merge) and a base")
    names = list(vectors)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = x.dtype
    name_shapes = tuple((n, tuple(vectors[n].shape[1:])) for n in names)
    if max_chunk_bytes is None:
        max_chunk_bytes = _MAX_CHUNK_BYTES
    per_unit = (
        sum(math.prod(s) for _, s in name_shapes) * torch.empty((), dtype=dtype).element_size()
    )
    chunk = max(1, min(x.shape[0], max_chunk_bytes // max(per_unit, 1)))
    bases = [None if base is None else base[n] for n in names]
    vecs = [vectors[n] for n in names]
    with torch.autocast(device, enabled=False):
        return _MergeAndApply.apply(
            x.to(dtype), coeff, base_coeff, index, activation, name_shapes, chunk, *bases, *vecs
        )
