"""Merge-and-apply as one autograd function: per-unit experts without storing them.

For U routing units with T tokens each, the merged expert of unit u is, tensor by tensor,
``W_u = B + Σ_i c_{u,i} V_i`` (B the base expert or absent, V_i the merge vectors, c the
coefficients), built for all units with one matrix product ``[U, N] × [N, P_t]`` per tensor and
applied with batched matrix products (spec section 5). Letting autograd record this keeps every
``W_u`` (U·P numbers) and its views alive for the backward pass and zero-fills and copies gradient
slices; here the function saves what the dense FFN saves (inputs, pre-activations, hidden
activations) and the (small) merge operands, rebuilds the merged weights in the backward pass
(or, within ``keep_merged_bytes``, keeps them from the forward: 16 MiB on the CPU), and
writes each tensor's gradient directly, so the cost is the dense FFN's plus the
``[U, N] × [N, P]`` products. Units are processed in chunks bounded by ``max_chunk_bytes`` of
merged weights: memory stays bounded for any batch and each chunk's weights stay in cache.
Forward outputs and the input gradient are written in place chunk by chunk; the base is merged
as an extra row, ``[c | 1] [V; B]``, and its gradient ``Σ_u dW_u`` rides as an extra row of
``[c | 1]ᵀ dW`` (one pass over dW for both).

The plain autograd version, :func:`nashmoe.moe.ffn.merged_ffn`, is the reference it is tested
against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from nashmoe.moe._activation import act as _act
from nashmoe.moe._activation import act_into as _act_into
from nashmoe.moe._activation import hidden_backward_
from nashmoe.moe.tiled import tiled_merge_and_apply

__all__ = ["merge_and_apply"]

_MAX_CHUNK_BYTES = 16 * 2**20  # about 8 units of d=256, f=1024: merged weights stay in cache
# Merged weights of all units (U·P numbers) kept from the forward for the backward pass when they
# fit in this budget (per call, by device type): the backward then skips the [U, N] × [N, P]
# rebuild and its pass over the N·P merge vectors; on accelerators all units are then merged with
# one product (one chunk). On the CPU 16 MiB: the tiled merge keeps tile by tile, which measured
# ~3 % of a step faster at d = 128, T = 256 (8 MiB per call) and level at d = 256 (32 MiB, +60 %
# saved memory); the unit-chunked function's kept weights measured slower than its rebuild
# (1.37× vs 1.27× dense at d=128, T=256; docs/results.md, issue 15).
_KEEP_MERGED_BYTES = {"cpu": 16 * 2**20}
_KEEP_MERGED_BYTES_DEFAULT = 2 * 2**30


def keep_merged_budget(device: str) -> int:
    """The default ``keep_merged_bytes`` of :func:`merge_and_apply` on ``device`` (a type)."""
    return _KEEP_MERGED_BYTES.get(device, _KEEP_MERGED_BYTES_DEFAULT)


def merge_plan(
    merged_bytes: int,
    device: str,
    dtype: torch.dtype,
    *,
    sparse: bool = False,
    tile_hidden: bool | None = None,
    keep_merged_bytes: int | None = None,
) -> tuple[bool, bool]:
    """``(tiled, keep)``: whether :func:`merge_and_apply` takes the tiled path for merged weights
    of ``merged_bytes`` (all units) on ``device`` (a type) in compute ``dtype``, and whether it
    keeps them for the backward pass (its arguments ``index is not None``, ``tile_hidden`` and
    ``keep_merged_bytes`` as given). Off the CPU kept weights go through one unit-chunked
    product instead of tiles; the CPU's default budget applies to the tiled path only (the
    unit-chunked rebuild measured faster there)."""
    budget = keep_merged_budget(device) if keep_merged_bytes is None else keep_merged_bytes
    keep = merged_bytes <= budget
    tileable = (
        not sparse and dtype in (torch.float32, torch.float64) and (device == "cpu" or not keep)
    )
    if tile_hidden and not tileable:
        raise ValueError(
            "tile_hidden=True needs a dense merge (no index) in float32/float64, on the CPU or "
            f"with merged weights that are not kept (keep_merged_bytes); got sparse={sparse}, "
            f"dtype={dtype}, device={device}, kept={keep}"
        )
    tiled = tileable and tile_hidden is not False
    if not tiled and keep_merged_bytes is None and device == "cpu":
        keep = False
    return tiled, keep


def _merged(name_shapes, c, base, vectors, idx=None, beta=None, out=None):
    """Merged weights of a chunk of u units: ``{name: [u, *shape]}``.

    Dense: ``B + c @ V`` (``c [u, N]``). Sparse (``idx [u, k]``): only the k selected vectors
    of each unit are read, ``B + Σ_j c[:, j] V[idx[:, j]]`` (``c [u, k]``), one fused
    gather-and-weighted-sum (``embedding_bag``), so the cost is proportional to k, not N.
    With ``beta [u]`` the base is scaled per unit: ``beta_u B + ...``. ``out`` (dense only): a
    list of ``[u, P_t]`` tensors written in place.
    """
    result = {}
    for t, ((name, shape), b, v) in enumerate(zip(name_shapes, base, vectors)):
        flat = v.reshape(v.shape[0], -1)
        if idx is None and out is not None:
            if b is None:
                w = torch.mm(c, flat, out=out[t])
            else:
                w = torch.addmm(b.reshape(1, -1), c, flat, out=out[t])
        elif idx is None:
            w = c @ flat if b is None else torch.addmm(b.reshape(1, -1), c, flat)
        else:
            w = F.embedding_bag(idx, flat, per_sample_weights=c, mode="sum")
            if b is not None:
                b = b.reshape(1, -1)  # in place: the gather's output is a fresh tensor
                w = w.add_(b) if beta is None else w.addcmul_(beta[:, None], b)
        result[name] = w.view(c.shape[0], *shape)
    return result


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
    def forward(ctx, x, coeff, beta, index, activation, name_shapes, chunk, keep, *operands):  # type: ignore[override]
        count = len(name_shapes)
        dtype = x.dtype  # the compute dtype; operands keep their storage dtype (cast per use)
        base_in, vectors_in = operands[:count], operands[count:]
        base = [None if b is None else b.to(dtype) for b in base_in]
        vectors = [v.to(dtype) for v in vectors_in]
        c_all = coeff.to(dtype)
        beta_all = None if beta is None else beta.to(dtype)
        units, length = x.shape[0], x.shape[1]
        names = [n for n, _ in name_shapes]
        shapes = dict(name_shapes)
        glu = "w_gate" in names
        hidden, d_out = shapes["w_in"][0], shapes["w_out"][0]
        # Outputs written in place chunk by chunk (no concatenation afterwards).
        pre = x.new_empty(units, length, hidden)
        gate = x.new_empty(units, length, hidden) if glu else None
        h = x.new_empty(units, length, hidden)
        y = x.new_empty(units, length, d_out)
        keep = keep and index is None
        kept = [x.new_empty(units, math.prod(shape)) for _, shape in name_shapes] if keep else None
        stacked = c_ext = None
        if index is None:  # B + c V = [c | 1] [V; B] (beta B: [c | beta]): one product
            stacked = [
                v.reshape(v.shape[0], -1)
                if b is None
                else torch.cat([v.reshape(v.shape[0], -1), b.reshape(1, -1)])
                for b, v in zip(base, vectors)
            ]
            last = c_all.new_ones(units, 1) if beta_all is None else beta_all[:, None]
            c_ext = torch.cat([c_all, last], dim=1)
        for start in range(0, units, chunk):
            stop = min(units, start + chunk)
            idx = None if index is None else index[start:stop]
            b_chunk = None if beta_all is None else beta_all[start:stop]
            if stacked is None:
                out = None if kept is None else [t[start:stop] for t in kept]
                w = _merged(name_shapes, c_all[start:stop], base, vectors, idx, b_chunk, out)
            else:
                w = {}
                for t, ((name, shape), b, flat) in enumerate(zip(name_shapes, base, stacked)):
                    c = (c_all if b is None else c_ext)[start:stop]
                    m = c @ flat if kept is None else torch.mm(c, flat, out=kept[t][start:stop])
                    w[name] = m.view(stop - start, *shape)
            xs = x[start:stop]
            pre_c, h_c, y_c = pre[start:stop], h[start:stop], y[start:stop]
            torch.bmm(xs, w["w_in"].transpose(1, 2), out=pre_c)
            if "b_in" in w:
                pre_c.add_(w["b_in"][:, None])
            if glu:
                gate_c = torch.bmm(xs, w["w_gate"].transpose(1, 2), out=gate[start:stop])
                torch.mul(_act(activation, gate_c), pre_c, out=h_c)
            else:
                _act_into(activation, pre_c, h_c)
            torch.bmm(h_c, w["w_out"].transpose(1, 2), out=y_c)
            if "b_out" in w:
                y_c.add_(w["b_out"][:, None])

        ctx.activation, ctx.name_shapes, ctx.chunk, ctx.glu = activation, name_shapes, chunk, glu
        ctx.keep = keep
        ctx.has_base = [b is not None for b in base_in]
        ctx.has_index, ctx.has_beta = index is not None, beta is not None
        saved = [x, coeff, pre, gate if glu else pre, h, index if index is not None else pre]
        saved.append(beta if beta is not None else pre)
        saved += [b if b is not None else pre for b in base_in]
        saved += list(vectors_in)
        saved += kept if keep else []
        ctx.save_for_backward(*saved)
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        saved = ctx.saved_tensors
        name_shapes, count = ctx.name_shapes, len(ctx.name_shapes)
        x, coeff_in, pre_all, gate_all, h_all, index, beta_in = saved[:7]
        index = index if ctx.has_index else None
        beta_in = beta_in if ctx.has_beta else None
        base_in = [b if has else None for b, has in zip(saved[7 : 7 + count], ctx.has_base)]
        vectors_in = saved[7 + count : 7 + 2 * count]
        kept = saved[7 + 2 * count :] if ctx.keep else None
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
        # Dense merge: the base's gradient Σ_u dW_u (Σ_u beta_u dW_u) rides as an extra row of
        # cᵀ dW (one pass over dW for both), [c | 1]ᵀ dW ([c | beta]ᵀ dW).
        fold_base = index is None and not low_precision
        grad_vec = [
            torch.zeros(
                v.shape[0] + (fold_base and b is not None),
                v[0].numel(),
                dtype=acc,
                device=v.device,
            )
            for v, b in zip(vectors_in, base_in)
        ]
        ones = None  # the base's column of [c | 1] or [c | beta]
        if fold_base:
            ones = (
                torch.ones(units, 1, dtype=acc, device=x.device)
                if beta is None
                else beta.to(acc)[:, None]
            )
        stacked = c_one = None
        if kept is None and index is None:  # rebuild as [c | 1] [V; B]
            stacked = [
                v.reshape(v.shape[0], -1)
                if b is None
                else torch.cat([v.reshape(v.shape[0], -1), b.reshape(1, -1)])
                for b, v in zip(base, vectors)
            ]
            last = coeff.new_ones(units, 1) if beta is None else beta[:, None]
            c_one = torch.cat([coeff, last], dim=1)
        for start in range(0, units, ctx.chunk):
            stop = min(units, start + ctx.chunk)
            idx = None if index is None else index[start:stop]
            sparse_coeff_grad = idx is not None and need_coeff
            c_chunk = coeff[start:stop]
            if sparse_coeff_grad:  # d coeff through the gather's own backward (no [u, k, P])
                c_chunk = c_chunk.detach().requires_grad_(True)
            if kept is not None:  # the forward's merged weights
                w = {
                    name: t[start:stop].view(stop - start, *shape)
                    for t, (name, shape) in zip(kept, name_shapes)
                }
            elif stacked is not None:
                w = {
                    name: ((coeff if b is None else c_one)[start:stop] @ flat).view(
                        stop - start, *shape
                    )
                    for (name, shape), b, flat in zip(name_shapes, base, stacked)
                }
            else:
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
            dpre, dgate = hidden_backward_(
                act, dh, pre, gate, torch.empty_like(dh) if glu else None
            )
            if glu:
                grads["w_gate"] = torch.bmm(dgate.transpose(1, 2), xs)
            grads["w_in"] = torch.bmm(dpre.transpose(1, 2), xs)
            if "b_in" in w:
                grads["b_in"] = dpre.sum(dim=1)
            if need_x:
                dx = torch.bmm(dpre, w["w_in"], out=grad_x[start:stop])
                if glu:
                    dx.baddbmm_(dgate, w["w_gate"])
            c = coeff[start:stop].to(acc)
            c_ext = torch.cat([c, ones[start:stop]], dim=1) if fold_base else None
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
                    if need_beta and grad_base[k] is not None:
                        grad_beta[start:stop] += g @ base[k].reshape(-1).to(acc)
                    if fold_base and grad_base[k] is not None:
                        grad_vec[k].addmm_(c_ext.T, g)  # cᵀ dW and Σ_u dW_u in one pass
                        continue
                    grad_vec[k].addmm_(c.T, g)
                if grad_base[k] is not None:
                    if beta is None:
                        grad_base[k] += g.sum(dim=0)
                    else:  # B scaled by beta_u per unit
                        b_acc = beta[start:stop].to(acc)
                        grad_base[k].addmv_(g.T, b_acc)
                        if need_beta:
                            grad_beta[start:stop] += g @ base[k].reshape(-1).to(acc)
        if fold_base:
            for k, v in enumerate(vectors_in):
                if grad_base[k] is not None:
                    grad_base[k] = grad_vec[k][v.shape[0]]
                    grad_vec[k] = grad_vec[k][: v.shape[0]]
        grad_base = [
            None if g is None else g.view(b.shape).to(b.dtype) for g, b in zip(grad_base, base_in)
        ]
        grad_vec = [g.view(v.shape).to(v.dtype) for g, v in zip(grad_vec, vectors_in)]
        if grad_coeff is not None:
            grad_coeff = grad_coeff.to(coeff_in.dtype)
        if grad_beta is not None:
            grad_beta = grad_beta.to(beta_in.dtype)
        return (grad_x, grad_coeff, grad_beta, None, None, None, None, None, *grad_base, *grad_vec)


class _DomainSum(torch.autograd.Function):
    """NAMEx's direction ``Σ_i α_i τ_i`` with ``τ_i = E_i − E_m`` (NAMEx paper, ICLR 2026), from
    τ given detached (formed for the Gram matrix) or, with ``tau=None``, as
    ``Σ_i α_i E_i − (Σ_i α_i) E_m`` (no N·P τ at all), in the parameters' dtype under autocast
    too (as the Gram matrix). The forward reads N·P numbers once and the backward is analytic,
    ``dE_i = α_i g`` and ``dE_m = −(Σ_i α_i) g`` (no N·P negation and sum); α gets no gradient
    (it is solved from a detached Gram matrix). The layer's separate path and the fallback of
    ``merge_and_apply(direction=)`` off the tiled path."""

    @staticmethod
    def forward(ctx, alpha, tau, experts, base):  # type: ignore[override]
        src = experts if tau is None else tau
        a = alpha.to(src.dtype)
        ctx.save_for_backward(a)
        ctx.expert_dtype, ctx.base_dtype = experts.dtype, base.dtype
        with torch.autocast(src.device.type, enabled=False):  # the parameters' dtype
            out = (a @ src.reshape(src.shape[0], -1)).view(src.shape[1:])
            if tau is None:
                out.addcmul_(base.to(out.dtype), a.sum(), value=-1)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (a,) = ctx.saved_tensors
        flat = grad.reshape(1, -1)
        grad_experts = (a[:, None] * flat).view(a.shape[0], *grad.shape)
        grad_base = grad * (-a.sum())
        return None, None, grad_experts.to(ctx.expert_dtype), grad_base.to(ctx.base_dtype)


def merge_and_apply(
    x: Tensor,
    coeff: Tensor,
    base: dict[str, Tensor] | None,
    vectors: dict[str, Tensor],
    *,
    activation: str,
    max_chunk_bytes: int | None = None,
    keep_merged_bytes: int | None = None,
    index: Tensor | None = None,
    base_coeff: Tensor | None = None,
    tile_hidden: bool | None = None,
    direction: Tensor | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Apply the merged expert ``B + Σ_i coeff[u, i] V_i`` of every unit to its tokens.

    Args:
        x: tokens of each unit ``[U, T, d]``.
        coeff: merge coefficients ``[U, N]`` (dense), or ``[U, k]`` with ``index``.
        base: the base expert ``{name: [*shape]}`` (None: no base, as SMEAR).
        vectors: the merge vectors ``{name: [N, *shape]}`` in layout order
            (``w_in``, ``w_gate``?, ``w_out``, ``b_in``?, ``b_out``?).
        activation: ``gelu``, ``gelu_tanh``, ``relu`` or ``silu``.
        max_chunk_bytes: bound on the merged weights held at once while they are built and
            applied (units are chunked; a chunk's weights stay in cache between the two).
        keep_merged_bytes: when all units' merged weights fit in this many bytes, the forward
            keeps them for the backward pass instead of rebuilding them there (dense merges
            only; 0 always rebuilds), and off the CPU merges all units in one product. Default
            (:func:`keep_merged_budget`): 16 MiB on the CPU for the tiled path (small layers,
            where keeping measured faster at little memory; the unit-chunked path rebuilds
            there unless given a budget), 2 GiB elsewhere.
        index: ``[U, k]`` (sparse merge, ``merge_top_k``): unit u merges only the vectors
            ``index[u]`` with coefficients ``coeff[u]``; they are gathered per unit, so the merge
            costs U·k·P instead of U·N·P, and only the selected vectors receive gradients.
        base_coeff: ``[U]``: the base is scaled per unit,
            ``base_coeff[u] B + Σ_j coeff[u, j] V[index[u, j]]`` (dense merges:
            ``+ Σ_i coeff[u, i] V_i``). With ``V = E`` (the raw experts) and
            ``base_coeff = 1 − Σ_j coeff[u, j]`` this is ``B + Σ_j coeff (E − B)`` without
            forming the N domain vectors ``E_i − B``.
        tile_hidden: tile over the hidden dimension f instead of over units
            (:mod:`nashmoe.moe.tiled`: one pass over the merge vectors per product for all
            units; ``max_chunk_bytes`` then bounds one tile, default ``tiled.TILE_BYTES``).
            None (default): wherever it applies, i.e. dense merges (no ``index``) computed in
            float32/float64, on the CPU (kept weights are then kept tile by tile) or whose
            merged weights are not kept. True where it does not apply is an error.
        direction: ``[N]`` weights a (no gradient): also return ``Σ_i a_i (V_i − B)`` per
            tensor, NAMEx's propagation direction with ``V = E`` the raw experts (needs a
            base). On the tiled path it is formed from the tiles the merge reads anyway and its
            gradient, ``a_i g`` for ``V_i`` and ``−(Σ_i a_i) g`` for B, is added to the merge's
            own gradient tiles (no separate N·P pass or sum); elsewhere it is a plain
            expression.

    Returns:
        ``[U, T, d]``, or ``(out, {name: direction})`` with ``direction``. Under autocast the
        computation runs in the autocast dtype; the base, vectors and coefficients keep their
        own dtype and their gradients, summed over chunks of units, accumulate in float32 at
        least.
    """
    if base_coeff is not None and base is None:
        raise ValueError("base_coeff scales the base: it needs a base")
    if direction is not None:
        if base is None:
            raise ValueError("direction is Σ_i a_i (V_i − B): it needs a base")
        first = next(iter(vectors.values()))
        if direction.shape != (first.shape[0],):
            raise ValueError(
                f"direction must have shape [N] = [{first.shape[0]}], got {tuple(direction.shape)}"
            )
    names = list(vectors)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = x.dtype
    name_shapes = tuple((n, tuple(vectors[n].shape[1:])) for n in names)
    per_unit = (
        sum(math.prod(s) for _, s in name_shapes) * torch.empty((), dtype=dtype).element_size()
    )
    tiled, keep = merge_plan(
        per_unit * x.shape[0],
        device,
        dtype,
        sparse=index is not None,
        tile_hidden=tile_hidden,
        keep_merged_bytes=keep_merged_bytes,
    )
    if tiled:
        with torch.autocast(device, enabled=False):
            return tiled_merge_and_apply(
                x.to(dtype),
                coeff,
                base,
                vectors,
                activation=activation,
                max_chunk_bytes=max_chunk_bytes,
                base_coeff=base_coeff,
                direction=direction,
                keep=keep,
            )
    if direction is not None:
        out = merge_and_apply(
            x,
            coeff,
            base,
            vectors,
            activation=activation,
            max_chunk_bytes=max_chunk_bytes,
            keep_merged_bytes=per_unit * x.shape[0] if keep else 0,  # the plan made here
            index=index,
            base_coeff=base_coeff,
            tile_hidden=tile_hidden,
        )
        delta = {n: _DomainSum.apply(direction, None, v, base[n]) for n, v in vectors.items()}
        return out, delta
    if max_chunk_bytes is None:
        max_chunk_bytes = _MAX_CHUNK_BYTES
    if keep and device != "cpu":  # memory allows: one merge product for all units
        max_chunk_bytes = max(max_chunk_bytes, per_unit * x.shape[0])
    chunk = max(1, min(x.shape[0], max_chunk_bytes // max(per_unit, 1)))
    bases = [None if base is None else base[n] for n in names]
    vecs = [vectors[n] for n in names]
    with torch.autocast(device, enabled=False):
        return _MergeAndApply.apply(
            x.to(dtype),
            coeff,
            base_coeff,
            index,
            activation,
            name_shapes,
            chunk,
            keep,
            *bases,
            *vecs,
        )
