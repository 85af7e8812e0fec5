"""Merge-and-apply tiled over the hidden dimension: one pass over the merge vectors per layer.

:func:`nashmoe.moe.fused.merge_and_apply` chunks over routing units: each chunk merges its units'
whole experts, ``[u, N] × [N, P]``, and so reads all N·P merge vectors again, in each of the four
merge products (merge, backward rebuild, ``cᵀ dW``, ``dW Vᵀ``). With U units that is U/u reads of
the vectors per product; at short segments (many units) these memory-bound products cost as much
as the expert matmuls themselves.

Here the hidden dimension f is tiled instead. For rows ``f0:f1`` the tile of every unit's merged
expert, ``W_in[f0:f1]``, ``W_gate[f0:f1]``, ``W_out[:, f0:f1]`` and ``b_in[f0:f1]``, is built for
all units with one product (the vectors' tile is read once) and applied at once:
``pre[..., f0:f1] = x W_in[f0:f1]ᵀ`` is complete for its columns, and ``y`` accumulates
``h[..., f0:f1] W_out[:, f0:f1]ᵀ`` over the tiles. The backward pass walks the same tiles:
``dh`` of a tile needs only its ``W_out`` columns, ``dx`` accumulates over tiles, and the weight
gradients of a tile are finished within it. A tile holds at most ``max_chunk_bytes`` of merged
weights (at least ``MIN_TILE_ROWS`` = 256 rows of f, or all of f when smaller), so it stays in
cache between its product and its use; units are chunked as well when that many rows of all
units do not fit twice that budget (the vectors' tile is then read once per chunk). ``W_out`` is
tiled along its columns: each tile's columns of ``[V; B]`` are copied contiguous (rows of r
numbers) before its product; transposing ``w_out`` once per call instead measured 20–30× slower
than a plain copy of the same size.

Activations are stored tile by tile in one flat buffer per kind (pre-activation, gate, hidden),
so nothing is concatenated. With ``keep`` the merged matrices are written tile by tile into flat
buffers of the same layout and saved for the backward pass, which then skips the rebuild (on the
CPU ``merge_and_apply`` keeps them when they fit its ``keep_merged_bytes`` budget). Used by
``merge_and_apply`` for dense merges (no ``index``) in float32 or float64 on the CPU (and off
it when the merged weights are not kept); the unit-chunked function remains for sparse merges,
low-precision compute and, off the CPU, kept weights in one product. Tested against plain autograd
and the unit-chunked function (``tests/moe/test_tiled.py``). NAMEx paper (ICLR 2026) and
CAMEx (ICLR 2025) define the merge; the tiling is ours.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nashmoe.moe._activation import act_into, hidden_backward_

__all__ = ["MIN_TILE_ROWS", "TILE_BYTES", "plan_tiles", "tiled_merge_and_apply"]

# Merged weights per tile, and the fewest f-rows per tile (or all of f): units are chunked before
# tiles get narrower than this (narrow tiles make every per-unit product small and the y/dx
# accumulation frequent). Chosen on this CPU among 2-8 MiB and 64-512 rows (docs/results.md);
# the differences between them were within the machine's noise, the unit-chunked merge was
# slower than all of them at T = 64.
TILE_BYTES = 4 * 2**20
MIN_TILE_ROWS = 256
# the merged matrices that keep=True stores for the backward pass (it needs no merged bias)
_KEPT = ("w_in", "w_gate", "w_out")


def plan_tiles(units: int, hidden: int, row_bytes: int, budget: int) -> tuple[int, int]:
    """``(unit_chunk, rows)``: units per chunk and f-rows per tile for merged weights of
    ``row_bytes`` per unit and f-row, within ``budget`` bytes per tile (up to twice that when
    the budget is below ``MIN_TILE_ROWS`` rows of all units)."""
    row_bytes = max(row_bytes, 1)
    floor = min(hidden, MIN_TILE_ROWS)
    if units * floor * row_bytes <= 2 * budget:
        chunk = units
    else:
        chunk = max(1, (2 * budget) // (floor * row_bytes))
    rows = min(hidden, max(1, budget // (chunk * row_bytes)))
    if chunk * floor * row_bytes <= 2 * budget:
        rows = max(rows, floor)
    return chunk, rows


def _tiles(units: int, hidden: int, chunk: int, rows: int):
    """(unit start, unit stop, row start, row stop, rows before the block) in storage order: a
    block starts at ``before · length`` in a flat activation buffer and at ``before · d`` in
    the kept weights."""
    before = 0
    for s in range(0, units, chunk):
        e = min(units, s + chunk)
        for f0 in range(0, hidden, rows):
            f1 = min(hidden, f0 + rows)
            yield s, e, f0, f1, before
            before += (e - s) * (f1 - f0)


class _Scratch:
    """Buffers reused by every tile of one call, one allocation per kind instead of one per
    tile: a fresh multi-MiB tensor per product measured ~25 % slower merges here (the
    allocator returns such blocks to the system and the next one page-faults again)."""

    def __init__(self, like: Tensor):
        self.like = like
        self.buffers: dict[str, Tensor] = {}

    def take(self, key: str, *shape: int) -> Tensor:
        numel = 1
        for n in shape:
            numel *= n
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self.buffers[key] = self.like.new_empty(numel)
        return buf[:numel].view(shape)


def _merge_rows(c: Tensor, vectors: Tensor, base: Tensor | None, out: Tensor) -> Tensor:
    """``out = c [V; B]`` for a tile of rows: ``vectors [N, m]`` (a view), ``base [m]`` or
    None; the base enters as a rank-1 update of the (cache-resident) product, so ``[V; B]``
    is never copied (a concatenation of all of V measured several times slower)."""
    n = vectors.shape[0]
    torch.mm(c[:, :n], vectors, out=out)
    if base is not None:
        out.addr_(c[:, n], base)
    return out


def _out_tile(vectors: Tensor, base: Tensor | None, f0: int, f1: int, buf: Tensor) -> Tensor:
    """The columns ``f0:f1`` of ``[V; B]`` for ``w_out [.., d, f]``, copied contiguous into
    ``buf`` as ``[K, d·r]`` (rows of r numbers: a fast copy, unlike transposing ``w_out``)."""
    n, d = vectors.shape[0], vectors.shape[1]
    k = n + (base is not None)
    tile = buf[: k * d * (f1 - f0)].view(k, d, f1 - f0)
    tile[:n].copy_(vectors[:, :, f0:f1])
    if base is not None:
        tile[n].copy_(base[:, f0:f1])
    return tile.view(k, -1)


def _flat(pair: tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor | None]:
    """A tile's ``(V [N, ...], B [...] or None)`` as ``([N, m], [m] or None)``."""
    v, b = pair
    return v.reshape(v.shape[0], -1), None if b is None else b.reshape(-1)


def _extended(c: Tensor, beta: Tensor | None, has_base: bool) -> Tensor:
    """``[c | 1]`` (``B + c V = [c | 1] [V; B]``), ``[c | beta]`` (``beta B + c V``) or c."""
    if not has_base:
        return c
    last = c.new_ones(c.shape[0], 1) if beta is None else beta.to(c.dtype)[:, None]
    return torch.cat([c, last], dim=1)


class _TiledMergeAndApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff, beta, direction, activation, names, chunk, rows, keep, *operands):  # type: ignore[override]
        count = len(names)
        dtype = x.dtype
        base_in, vectors_in = operands[:count], operands[count:]
        has_base = base_in[0] is not None
        base = {n: None if b is None else b.to(dtype) for n, b in zip(names, base_in)}
        vectors = {n: v.to(dtype) for n, v in zip(names, vectors_in)}
        c = _extended(coeff.to(dtype), beta, has_base)
        units, length, d = x.shape
        hidden = vectors["w_in"].shape[1]
        glu = "w_gate" in vectors
        k = c.shape[1]
        has_dir = direction is not None
        if has_dir:  # [a | −Σ a]: Σ_i a_i (V_i − B) as one more row of the merge
            a = direction.to(dtype)
            dir_row = torch.cat([a, -a.sum()[None]])[None]
            delta = {n: x.new_empty(vectors[n].shape[1:]) for n in names}

        scratch = _Scratch(x)
        # kept merged weights (keep): [U·f·d] per matrix, tile blocks in storage order
        kept = {n: x.new_empty(units * hidden * d) for n in _KEPT if n in vectors} if keep else {}

        def target(name: str, u: int, numel: int, at: int) -> Tensor:
            if name in kept:
                return kept[name][at : at + u * numel].view(u, numel)
            return scratch.take(name, u, numel)

        def merged(name: str, f0: int, f1: int, cs: Tensor, at: int = 0) -> Tensor:
            v, b = vectors[name], base[name]  # merged rows f0:f1
            n = v.shape[0]
            v = v[:, f0:f1].reshape(n, -1)
            return _merge_rows(
                cs,
                v,
                None if b is None else b[f0:f1].reshape(-1),
                target(name, cs.shape[0], v.shape[1], at),
            )

        pre = x.new_empty(units * length * hidden)
        gate = x.new_empty(units * length * hidden) if glu else None
        h = x.new_empty(units * length * hidden)
        y = x.new_empty(units, length, d)
        buf = x.new_empty(k * d * min(rows, hidden))
        for s, e, f0, f1, before in _tiles(units, hidden, chunk, rows):
            u, r = e - s, f1 - f0
            cs, xs, ys = c[s:e], x[s:e], y[s:e]
            n_act = u * length * r
            off, at = before * length, before * d  # the block in the activations, kept weights
            pre_b = pre[off : off + n_act].view(u, length, r)
            h_b = h[off : off + n_act].view(u, length, r)
            if has_dir and s == 0:  # the direction's rows f0:f1 (of the tensors tiled by rows)
                for n in names:
                    if n not in ("w_out", "b_out"):
                        _merge_rows(
                            dir_row,
                            vectors[n][:, f0:f1].reshape(vectors[n].shape[0], -1),
                            base[n][f0:f1].reshape(-1),
                            delta[n][f0:f1].view(1, -1),
                        )
            w_in = merged("w_in", f0, f1, cs, at).view(u, r, d)
            torch.bmm(xs, w_in.transpose(1, 2), out=pre_b)
            if "b_in" in vectors:
                pre_b.add_(merged("b_in", f0, f1, cs)[:, None])
            if glu:
                w_gate = merged("w_gate", f0, f1, cs, at).view(u, r, d)
                gate_b = gate[off : off + n_act].view(u, length, r)
                torch.bmm(xs, w_gate.transpose(1, 2), out=gate_b)
                act_into(activation, gate_b, h_b).mul_(pre_b)
            else:
                act_into(activation, pre_b, h_b)
            out_tile = _out_tile(vectors["w_out"], base["w_out"], f0, f1, buf)
            w_out = torch.mm(cs, out_tile, out=target("w_out", u, d * r, at)).view(u, d, r)
            if has_dir and s == 0:
                delta["w_out"][:, f0:f1].copy_((dir_row @ out_tile).view(d, r))
            if f0 == 0:
                torch.bmm(h_b, w_out.transpose(1, 2), out=ys)
            else:
                ys.baddbmm_(h_b, w_out.transpose(1, 2))
        if "b_out" in vectors:
            y.add_(merged("b_out", 0, d, c)[:, None])
            if has_dir:
                _merge_rows(dir_row, vectors["b_out"], base["b_out"], delta["b_out"].view(1, -1))
        ctx.activation, ctx.names, ctx.chunk, ctx.rows = activation, names, chunk, rows
        ctx.has_base, ctx.has_beta, ctx.has_dir = has_base, beta is not None, has_dir
        saved = [x, coeff, beta if beta is not None else pre, pre, gate if glu else pre, h]
        saved += [b if b is not None else pre for b in base_in]
        saved += list(vectors_in)
        saved += [dir_row if has_dir else pre]
        ctx.kept = tuple(kept)
        saved += list(kept.values())
        ctx.save_for_backward(*saved)
        if not has_dir:
            return y
        return (y, *(delta[n].to(v.dtype) for n, v in zip(names, vectors_in)))

    @staticmethod
    def backward(ctx, grad_y, *grad_delta):  # type: ignore[override]
        names, count = ctx.names, len(ctx.names)
        saved = ctx.saved_tensors
        x, coeff_in, beta_in, pre, gate, h = saved[:6]
        beta_in = beta_in if ctx.has_beta else None
        base_in = saved[6 : 6 + count] if ctx.has_base else [None] * count
        vectors_in = saved[6 + count : 6 + 2 * count]
        kept = dict(zip(ctx.kept, saved[len(saved) - len(ctx.kept) :]))
        saved = saved[: len(saved) - len(ctx.kept)]
        dir_row = saved[-1][0] if ctx.has_dir else None  # [K]: [a | −Σ a]
        dtype = x.dtype
        base = {n: None if b is None else b.to(dtype) for n, b in zip(names, base_in)}
        vectors = {n: v.to(dtype) for n, v in zip(names, vectors_in)}
        n_vec = vectors_in[0].shape[0]
        c = _extended(coeff_in.to(dtype), beta_in, ctx.has_base)
        units, length, d = x.shape
        hidden = vectors["w_in"].shape[1]
        glu = "w_gate" in vectors
        k = c.shape[1]
        activation = ctx.activation
        grad_y = grad_y.to(dtype).contiguous()
        need_x, need_coeff = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_beta = ctx.has_beta and ctx.needs_input_grad[2]
        grad_x = torch.empty_like(x) if need_x else None
        # [K', U] (K' = N, or N + 1 for beta's row): products V gᵀ
        n_c = n_vec + need_beta
        grad_c_t = x.new_zeros(n_c, units) if need_coeff or need_beta else None
        # written by the first unit chunk of every tile (beta=0), so allocated uninitialised
        grad_ops = {n: x.new_empty(k, *vectors[n].shape[1:]) for n in names if n != "w_out"}
        grad_out = x.new_empty(k, d, hidden)  # w_out's [V; B] gradient, its own layout
        buf = x.new_empty(k * d * min(ctx.rows, hidden))
        scratch = _Scratch(x)
        # the direction's gradient g: a_i g to V_i and −(Σ a) g to B, added to the first unit
        # chunk's gradient tiles while they are in cache
        gd = {n: g.to(dtype) for n, g in zip(names, grad_delta)} if ctx.has_dir else None
        for s, e, f0, f1, before in _tiles(units, hidden, ctx.chunk, ctx.rows):
            u, r = e - s, f1 - f0
            first = s == 0  # the first unit chunk writes the vectors' gradient tile
            cs, xs, dy = c[s:e], x[s:e], grad_y[s:e]
            n_act = u * length * r
            off, at = before * length, before * d
            pre_b = pre[off : off + n_act].view(u, length, r)
            h_b = h[off : off + n_act].view(u, length, r)
            # (V tile [N, m], B tile [m] or None) per tensor; w_out's as a contiguous copy
            tile = {
                n: (v[:, f0:f1].reshape(n_vec, -1), None if base[n] is None else base[n][f0:f1])
                for n, v in vectors.items()
                if n not in ("w_out", "b_out")
            }
            out_tile = _out_tile(vectors["w_out"], base["w_out"], f0, f1, buf)
            tile["w_out"] = (out_tile[:n_vec], out_tile[n_vec] if ctx.has_base else None)
            if kept:  # from the forward pass
                w_in = kept["w_in"][at : at + u * r * d].view(u, r, d)
                w_out = kept["w_out"][at : at + u * d * r].view(u, d, r)
            else:
                w_in = _merge_rows(cs, *_flat(tile["w_in"]), scratch.take("w_in", u, r * d))
                w_in = w_in.view(u, r, d)
                w_out = torch.mm(cs, out_tile, out=scratch.take("w_out", u, d * r)).view(u, d, r)
            grads = {
                "w_out": torch.bmm(dy.transpose(1, 2), h_b, out=scratch.take("g_w_out", u, d, r))
            }
            dh = torch.bmm(dy, w_out, out=scratch.take("dh", u, length, r))
            gate_b = gate[off : off + n_act].view(u, length, r) if glu else None
            spare = scratch.take("dgate", u, length, r) if glu else None
            dpre, dgate = hidden_backward_(activation, dh, pre_b, gate_b, spare)
            if glu and kept:
                w_gate = kept["w_gate"][at : at + u * r * d].view(u, r, d)
            elif glu:
                w_gate = _merge_rows(
                    cs, *_flat(tile["w_gate"]), scratch.take("w_gate", u, r * d)
                ).view(u, r, d)
            if glu:
                grads["w_gate"] = torch.bmm(
                    dgate.transpose(1, 2), xs, out=scratch.take("g_w_gate", u, r, d)
                )
            grads["w_in"] = torch.bmm(dpre.transpose(1, 2), xs, out=scratch.take("g_w_in", u, r, d))
            if "b_in" in vectors:
                grads["b_in"] = dpre.sum(dim=1)
            if need_x:
                dx = grad_x[s:e]
                if f0 == 0:
                    torch.bmm(dpre, w_in, out=dx)
                else:
                    dx.baddbmm_(dpre, w_in)
                if glu:
                    dx.baddbmm_(dgate, w_gate)
            for n, g in grads.items():
                g = g.reshape(u, -1)
                if grad_c_t is not None:  # V gᵀ: measured faster than g Vᵀ for these shapes
                    v_tile, b_tile = _flat(tile[n])
                    grad_c_t[:n_vec, s:e].addmm_(v_tile, g.T)
                    if need_beta:
                        grad_c_t[n_vec, s:e].addmv_(g, b_tile)
                if n == "w_out":  # columns f0:f1 of [K, d, f]: a product, then a strided copy
                    prod = torch.mm(cs.T, g, out=scratch.take("g_out", k, d * r))
                    if first and gd is not None:
                        prod.addr_(dir_row, gd[n][:, f0:f1].reshape(-1))
                    if first:
                        grad_out[:, :, f0:f1].copy_(prod.view(k, d, r))
                    else:
                        grad_out[:, :, f0:f1] += prod.view(k, d, r)
                else:
                    tile_grad = grad_ops[n][:, f0:f1].reshape(k, -1)
                    tile_grad.addmm_(cs.T, g, beta=0 if first else 1)
                    if first and gd is not None:
                        tile_grad.addr_(dir_row, gd[n][f0:f1].reshape(-1))
        if "b_out" in vectors:
            db_out = grad_y.sum(dim=1)  # [U, d]
            if grad_c_t is not None:
                grad_c_t[:n_vec].addmm_(vectors["b_out"], db_out.T)
                if need_beta:
                    grad_c_t[n_vec].addmv_(db_out, base["b_out"])
            grad_ops["b_out"].addmm_(c.T, db_out, beta=0)
            if gd is not None:
                grad_ops["b_out"].addr_(dir_row, gd["b_out"])
        grad_ops["w_out"] = grad_out
        grad_vec, grad_base = [], []
        for n, b, v in zip(names, base_in, vectors_in):
            g = grad_ops[n]
            grad_vec.append(g[:n_vec].to(v.dtype))
            grad_base.append(None if b is None else g[n_vec].to(b.dtype))
        grad_coeff = grad_beta = None
        if need_coeff:
            grad_coeff = grad_c_t[:n_vec].T.to(coeff_in.dtype)
        if need_beta:
            grad_beta = grad_c_t[n_vec].to(beta_in.dtype)
        grads_in = (grad_x, grad_coeff, grad_beta, None, None, None, None, None, None)
        return (*grads_in, *grad_base, *grad_vec)


def tiled_merge_and_apply(
    x: Tensor,
    coeff: Tensor,
    base: dict[str, Tensor] | None,
    vectors: dict[str, Tensor],
    *,
    activation: str,
    max_chunk_bytes: int | None = None,
    base_coeff: Tensor | None = None,
    direction: Tensor | None = None,
    keep: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """``merge_and_apply`` for dense merges, tiled over the hidden dimension (module docstring).

    Args:
        x: tokens of each unit ``[U, T, d]`` (float32 or float64: the compute dtype).
        coeff: merge coefficients ``[U, N]``.
        base: the base expert ``{name: [*shape]}`` or None.
        vectors: ``{name: [N, *shape]}`` with ``w_in [f, d]``, ``w_out [d, f]`` and optionally
            ``w_gate [f, d]``, ``b_in [f]``, ``b_out [d]``.
        activation: ``gelu``, ``gelu_tanh``, ``relu`` or ``silu``.
        max_chunk_bytes: merged weights per tile (default ``TILE_BYTES``).
        base_coeff: ``[U]``: the base is scaled per unit, ``base_coeff[u] B + Σ_i coeff[u, i]
            V_i`` (with ``V = E``, the raw experts, and ``1 − Σ_i coeff[u, i]``, this is
            ``B + Σ_i coeff (E_i − B)`` without the N domain vectors).
        direction: ``[N]`` weights a (detached; needs a base): also return
            ``{name: Σ_i a_i (V_i − B)}``, formed from each tile as one more merge row; its
            gradient is added to the merge's gradient tiles in the backward pass.
        keep: store every tile's merged ``w_in``, ``w_gate`` and ``w_out`` (U·f·d numbers each)
            for the backward pass instead of rebuilding them there: one merge product per
            matrix instead of two, for that much more saved memory.
    """
    names = tuple(vectors)
    if "w_in" not in vectors or "w_out" not in vectors:
        raise ValueError(f"vectors need 'w_in' and 'w_out', got {list(names)}")
    if base_coeff is not None and base is None:
        raise ValueError("base_coeff scales the base: it needs a base")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"tiled_merge_and_apply computes in float32/float64, got {x.dtype}")
    units, _, d = x.shape
    hidden = vectors["w_in"].shape[1]
    per_row = d * (3 if "w_gate" in vectors else 2) + ("b_in" in vectors)
    budget = TILE_BYTES if max_chunk_bytes is None else max_chunk_bytes
    chunk, rows = plan_tiles(units, hidden, per_row * x.element_size(), budget)
    if direction is not None and base is None:
        raise ValueError("direction is Σ_i a_i (V_i − B): it needs a base")
    bases = [None if base is None else base[n] for n in names]
    direction = None if direction is None else direction.detach()
    if keep:  # kept weights serve a backward pass only
        inputs = [x, coeff, base_coeff, *bases, *(vectors[n] for n in names)]
        keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    out = _TiledMergeAndApply.apply(
        x,
        coeff,
        base_coeff,
        direction,
        activation,
        names,
        chunk,
        rows,
        keep,
        *bases,
        *(vectors[n] for n in names),
    )
    if direction is None:
        return out
    return out[0], dict(zip(names, out[1:]))
