"""A FLOP-and-bytes cost model of one MoE feed-forward layer (forward + backward), docs/design.md.

Per layer with M tokens, d model width, f hidden width, N experts, segments (units) of T tokens
(U = M / T units), P = 2·d·f parameters per expert (no GLU, no bias), s bytes per element:

- dense: 6·M·P FLOPs (three matrix products of 2·M·P each: forward, input gradient, weight
  gradient); bytes: the weights three times and the activations (x, pre, h, y and their
  gradients), about s·(6·P + M·(6·d + 10·f)).
- merged (chunked fused kernel, merged weights rebuilt in backward): dense + 8·U·N·P FLOPs (the
  merge [U, N] × [N, P] in forward and again in backward, dc = dW Vᵀ, dV = cᵀ dW); bytes: dense
  + per chunk five passes over the N·P merge vectors (read ×3, gradient read + write) + the
  per-unit merged weights and their gradients (write/read about 7·U·P).
  Keeping the merged weights for backward removes 2·U·N·P FLOPs and one N·P pass per chunk.
- merged, tiled over f (``tiled=True``, the CPU default: :mod:`nashmoe.moe.tiled`): the same
  FLOPs; the N·P vectors are read once per chunk of units (one chunk unless there are very many
  units), and y and dx are read and written once more per extra f-tile (accumulation).
- merged with merge_top_k = k: the merge gathers k vectors per unit: 2·U·k·P FLOPs per merge,
  U·k·P reads instead of N·P per chunk.
- smoe top-k: 6·k·M·P FLOPs; bytes: the activations k times, the N·P expert weights three times,
  the dispatch (gather, scatter of M·k·d).

Time = matrix-product FLOPs / F + bytes / B, with F the matmul rate and B the copy bandwidth of
one core, both measured by :func:`calibrate` (a [M, d] × [d, f] matmul and a large clone).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass
class Machine:
    flops: float  # matrix-product FLOP/s
    bandwidth: float  # bytes/s (copy: read + write counted)
    name: str = "cpu"


def _median_time(fn, repeats=7, timer=time.perf_counter):
    fn()
    times = []
    for _ in range(repeats):
        start = timer()
        fn()
        times.append(timer() - start)
    return statistics.median(times)


def calibrate(
    d: int = 256, f: int = 1024, m: int = 4096, copy_mb: int = 256, timer=time.perf_counter
) -> Machine:
    """Matmul FLOP/s (float32, [m, d] × [d, f]) and copy bandwidth (``copy_`` of copy_mb MB) on
    the current thread settings, timed with ``timer`` (use the benchmark's clock)."""
    a, b = torch.randn(m, d), torch.randn(d, f)
    t_mm = _median_time(lambda: a @ b, timer=timer)
    src = torch.empty(copy_mb * 2**20 // 4)
    src.fill_(1.0)
    dst = torch.empty_like(src)
    t_copy = _median_time(lambda: dst.copy_(src), timer=timer)
    return Machine(flops=2 * m * d * f / t_mm, bandwidth=2 * src.numel() * 4 / t_copy)


# H100/H200 SXM dense bf16 tensor-core peak and HBM bandwidth (vendor sheets): 989 TFLOP/s;
# 3.35 TB/s (H100), 4.8 TB/s (H200). Sustained fractions are lower (spec section 5 anchor: a
# dense FFN at 480 TFLOP/s on an H100).
H100 = Machine(flops=989e12, bandwidth=3.35e12, name="H100 SXM bf16 peak")
H200 = Machine(flops=989e12, bandwidth=4.8e12, name="H200 SXM bf16 peak")


def layer_cost(
    method: str,
    *,
    d: int,
    f: int,
    n: int,
    tokens: int,
    t: int | None = None,
    top_k: int = 2,
    merge_top_k: int | None = None,
    bytes_per: int = 4,
    chunk_bytes: int = 16 * 2**20,
    keep_merged: bool = False,
    tiled: bool = False,
) -> tuple[float, float]:
    """(matrix-product FLOPs, bytes moved) of one layer, forward + backward."""
    p = 2 * d * f
    m, s = tokens, bytes_per
    act_bytes = s * m * (6 * d + 10 * f)
    dense_flops = 6.0 * m * p
    dense_bytes = s * 6 * p + act_bytes
    if method == "dense":
        return dense_flops, dense_bytes
    if method == "smoe":
        k = top_k
        flops = k * dense_flops + 2.0 * m * d * n  # + the router
        nbytes = s * 6 * n * p + k * act_bytes + s * 6 * m * k * d
        return flops, nbytes
    assert t is not None
    u = max(1, -(-m // t))
    chunk = max(1, min(u, chunk_bytes // (p * s)))
    chunks = -(-u // chunk)
    accumulate = 0.0
    if tiled and merge_top_k is None:
        from nashmoe.moe.tiled import plan_tiles

        chunk, rows = plan_tiles(u, f, 2 * d * s, chunk_bytes)
        chunks, tiles = -(-u // chunk), -(-f // rows)
        accumulate = 4.0 * (tiles - 1) * m * d * s  # y (forward), dx (backward): read + write
    merges = 1 if keep_merged else 2
    if merge_top_k is None:
        flops = dense_flops + (2 * merges + 4) * u * n * p
        vec_bytes = chunks * (merges + 3) * n * p * s
    else:
        k = merge_top_k
        flops = dense_flops + 2 * merges * u * k * p + 4 * u * k * p
        vec_bytes = (merges + 3) * u * k * p * s
    # per-unit weights and their gradients: written, read (forward), rebuilt, read twice
    # (backward), gradient written and read; kept weights skip the rebuild
    unit_passes = 6 if keep_merged else 7
    nbytes = dense_bytes + vec_bytes + unit_passes * u * p * s + 2.0 * n * p * s + accumulate  # + τ
    return flops, nbytes


def predict(machine: Machine, method: str, **kw) -> float:
    flops, nbytes = layer_cost(method, **kw)
    return flops / machine.flops + nbytes / machine.bandwidth


if __name__ == "__main__":
    torch.set_num_threads(1)
    cpu = calibrate()
    print(f"one core: {cpu.flops / 1e9:.1f} GFLOP/s matmul, {cpu.bandwidth / 1e9:.1f} GB/s copy")
    for gpu in (H100, H200):
        for d, f, tokens in ((768, 3072, 16384), (1024, 4096, 32768)):
            kw = dict(d=d, f=f, n=8, tokens=tokens, bytes_per=2)
            base = predict(gpu, "dense", **kw)
            row = [f"{gpu.name} d={d}/f={f} {tokens} tokens: dense {base * 1e3:.3f} ms"]
            kept = dict(keep_merged=True, chunk_bytes=2**31)  # the default off the CPU
            for name, method, extra in (
                ("T=256 chunked 16 MB, rebuilt", "camex", dict(t=256)),
                ("T=256 one product, kept", "camex", dict(t=256, **kept)),
                ("T=256 top-2 merge, kept", "camex", dict(t=256, merge_top_k=2, **kept)),
                ("T=1024 one product, kept", "camex", dict(t=1024, **kept)),
                ("smoe top-2", "smoe", {}),
            ):
                row.append(f"{name} {predict(gpu, method, **kw, **extra) / base:.2f}x")
            print("; ".join(row))
