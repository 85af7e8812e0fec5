"""Forward+backward time and memory of every MoE method against the dense FFN of the same shape.

Each configuration is a residual stack of ``--layers`` feed-forward blocks (h ← h + layer(h)) so
the propagation of EP-CAMEx and NAMEx is included; the loss is a plain sum plus the layers'
auxiliary losses. Methods are timed round-robin (every repeat runs every method once) and the
median is reported, with ratios against dense (and CAMEx) measured side by side in the same run.

Memory: on CUDA, the peak allocated memory of one step; on CPU, the bytes saved for the backward
pass (unique storages recorded by ``torch.autograd.graph.saved_tensors_hooks``), which is what
dominates the peak.

    python benchmarks/bench_moe_layers.py                # CPU shapes -> runs/bench/*.json
    python benchmarks/bench_moe_layers.py --quick        # a smoke run
    python benchmarks/bench_moe_layers.py --device cuda  # d=768/f=3072, d=1024/f=4096, bf16

A method name with the suffix ``@units`` (``camex@units``) runs that method with the merge
chunked over units (``merge_and_apply(tile_hidden=False)``) instead of the default tiling over
the hidden dimension, and ``@rebuild`` (``camex@rebuild``) with the merged weights rebuilt in
the backward pass (``keep_merged_bytes=0``) where the default budget keeps them, for
side-by-side comparisons in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from nashmoe.moe import METHODS, MoEConfig, MoEFeedForward

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_model import Machine, calibrate, layer_cost


def build(method: str, d: int, f: int, n: int, t: int, layers: int, device, dtype):
    kwargs = dict(method=method, d_model=d, d_ff=f, num_experts=n)
    if method not in ("dense", "smoe"):
        kwargs["segment_len"] = t
    cfg = MoEConfig(**kwargs)
    stack = torch.nn.ModuleList(MoEFeedForward(cfg, owns_base=(i == 0)) for i in range(layers)).to(
        device=device, dtype=dtype
    )
    # as in the GPT (and link_moe_layers): nothing uses the last layer's propagation step
    stack[-1].last_in_chain = True
    return stack


@contextlib.contextmanager
def merge_path(method: str):
    """``@units``: the unit-chunked merge (``tile_hidden=False``) for the duration;
    ``@rebuild``: merged weights rebuilt in the backward pass (``keep_merged_bytes=0``)."""
    from nashmoe.moe import fused

    defaults = fused.merge_and_apply.__kwdefaults__
    previous = defaults["tile_hidden"], defaults["keep_merged_bytes"]
    if method.endswith("@units"):
        defaults["tile_hidden"] = False
    if method.endswith("@rebuild"):
        defaults["keep_merged_bytes"] = 0
    try:
        yield
    finally:
        defaults["tile_hidden"], defaults["keep_merged_bytes"] = previous


def step(stack, x):
    h, state, aux_loss = x, None, 0.0
    for layer in stack:
        y, aux = layer(h, state=state, return_aux=True)
        state = aux.state
        aux_loss = aux_loss + aux.loss
        h = h + y
    loss = h.float().square().mean() + aux_loss
    loss.backward()
    return loss


def saved_bytes(stack, x) -> int:
    storages: dict[int, int] = {}

    def pack(t):
        if t.device.type != "meta":
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h, state = x, None
        for layer in stack:
            y, aux = layer(h, state=state, return_aux=True)
            state = aux.state
            h = h + y
    return sum(storages.values())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def predicted_s(
    machine: Machine | None, method, d, f, n, t, tokens, layers, bytes_per, device_type="cpu"
):
    """The cost model's time of the stack (layers × one layer's forward + backward)."""
    if machine is None:
        return None
    from nashmoe.moe import fused
    from nashmoe.moe import tiled as tiled_module

    kw = dict(d=d, f=f, n=n, tokens=tokens, bytes_per=bytes_per)
    units = method.endswith("@units")
    rebuild = method.endswith("@rebuild")
    method = method.split("@")[0]
    if method not in ("dense", "smoe"):
        # merge_and_apply's plan (its default keep budget, or none with @rebuild)
        tiled, keep = fused.merge_plan(
            -(-tokens // t) * 2 * d * f * bytes_per,
            device_type,
            torch.float32 if bytes_per >= 4 else torch.bfloat16,
            tile_hidden=False if units else None,
            keep_merged_bytes=0 if rebuild else None,
        )
        kw.update(t=t, keep_merged=keep, tiled=tiled)
        kw["chunk_bytes"] = tiled_module.TILE_BYTES if tiled else fused._MAX_CHUNK_BYTES
    flops, nbytes = layer_cost("camex" if method not in ("dense", "smoe") else method, **kw)
    return layers * (flops / machine.flops + nbytes / machine.bandwidth)


def _spread(values):
    return min(values), max(values)


def bench_shape(
    d, f, n, t, tokens, layers, methods, repeats, device, dtype, autocast, machine, clock="wall"
):
    batch = max(1, tokens // 1024) if t <= 1024 else 1
    seq = tokens // batch
    x = torch.randn(batch, seq, d, device=device, dtype=dtype, requires_grad=False)
    stacks = {m: build(m.split("@")[0], d, f, n, t, layers, device, dtype) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    other: dict[str, list[float]] = {m: [] for m in methods}  # the other clock
    timer, other_timer = time.perf_counter, time.process_time
    if clock == "process":
        timer, other_timer = other_timer, timer
    ctx = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if autocast
        else torch.autocast(device.type, enabled=False)
    )
    with ctx:
        for m in methods:  # warm-up
            with merge_path(m):
                step(stacks[m], x)
            stacks[m].zero_grad(set_to_none=True)
        for _ in range(repeats):
            for m in methods:
                sync(device)
                with merge_path(m):
                    start, start_other = timer(), other_timer()
                    step(stacks[m], x)
                    sync(device)
                times[m].append(timer() - start)
                other[m].append(other_timer() - start_other)
                stacks[m].zero_grad(set_to_none=True)
        rows = []
        for m in methods:
            with merge_path(m):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    step(stacks[m], x)
                    memory = torch.cuda.max_memory_allocated()
                    stacks[m].zero_grad(set_to_none=True)
                else:
                    memory = saved_bytes(stacks[m], x)
            # ratios paired within a round (same load), then their median and range
            paired = [a / b for a, b in zip(times[m], times["dense"])]
            paired_camex = (
                [a / b for a, b in zip(times[m], times["camex"])] if "camex" in times else None
            )
            rows.append(
                dict(
                    method=m,
                    time_s=statistics.median(times[m]),
                    time_min_s=min(times[m]),
                    time_max_s=max(times[m]),
                    times_s=times[m],
                    other_clock_times_s=other[m],
                    vs_dense_paired=statistics.median(paired),
                    vs_dense_paired_range=_spread(paired),
                    vs_camex_paired=None
                    if paired_camex is None
                    else statistics.median(paired_camex),
                    vs_camex_paired_range=None if paired_camex is None else _spread(paired_camex),
                    predicted_s=predicted_s(
                        machine,
                        m,
                        d,
                        f,
                        n,
                        t,
                        batch * seq,
                        layers,
                        2 if autocast else 4,
                        device.type,
                    ),
                    memory_bytes=memory,
                )
            )
    dense = next(r["time_s"] for r in rows if r["method"] == "dense")
    camex = next((r["time_s"] for r in rows if r["method"] == "camex"), None)
    dense_mem = next(r["memory_bytes"] for r in rows if r["method"] == "dense")
    dense_pred = next(r["predicted_s"] for r in rows if r["method"] == "dense")
    for r in rows:
        r.update(
            predicted_vs_dense=None if dense_pred is None else r["predicted_s"] / dense_pred,
            d_model=d,
            d_ff=f,
            num_experts=n,
            segment_len=t,
            tokens=batch * seq,
            layers=layers,
            vs_dense=r["time_s"] / dense,
            vs_camex=None if camex is None else r["time_s"] / camex,
            memory_vs_dense=r["memory_bytes"] / dense_mem,
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--quick", action="store_true", help="one small shape, few repeats")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--shapes", default="", help="d:f:T[,d:f:T...] (4,096 tokens; default: all)")
    p.add_argument("--no-calibrate", action="store_true", help="skip the cost-model calibration")
    p.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="wall time, or process CPU time (excludes time descheduled on a shared machine)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_start = os.getloadavg()
    machine = None
    if not args.no_calibrate and device.type == "cpu":
        machine = calibrate(
            timer=time.process_time if args.clock == "process" else time.perf_counter
        )
        print(
            f"calibration: {machine.flops / 1e9:.1f} GFLOP/s matmul, "
            f"{machine.bandwidth / 1e9:.1f} GB/s copy; load average {load_start[0]:.2f}"
        )
    methods = args.methods.split(",")
    if "dense" not in methods:
        methods = ["dense", *methods]
    if args.quick:
        shapes = [(64, 256, 8, 64, 1024)]
        args.repeats = 2
    elif device.type == "cpu":
        shapes = [
            (128, 512, 8, 256, 4096),
            (128, 512, 8, 64, 4096),
            (256, 1024, 8, 256, 4096),
            (256, 1024, 8, 64, 4096),
        ]
    else:
        shapes = [
            (768, 3072, 8, 256, 16384),
            (1024, 4096, 8, 256, 32768),
            (768, 3072, 8, 1024, 16384),
        ]
    if args.shapes:
        shapes = [
            (int(a), int(b), 8, int(c), 4096)
            for a, b, c in (item.split(":") for item in args.shapes.split(","))
        ]
    cuda = device.type == "cuda"
    rows = []
    for d, f, n, t, tokens in shapes:
        rows += bench_shape(
            d,
            f,
            n,
            t,
            tokens,
            args.layers,
            methods,
            args.repeats,
            device,
            torch.float32,
            autocast=cuda,
            machine=machine,
            clock=args.clock,
        )
    header = (
        f"{'d':>5} {'f':>5} {'T':>5} {'method':<15} {'ms/step':>9} {'min-max ms':>13} "
        f"{'x dense':>8} {'(range)':>11} {'x camex':>8} {'pred ms':>8} {'pred x':>7} "
        f"{'mem MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        vs_camex = "" if r["vs_camex_paired"] is None else f"{r['vs_camex_paired']:.2f}"
        lo, hi = r["vs_dense_paired_range"]
        pred = "" if r["predicted_s"] is None else f"{1e3 * r['predicted_s']:.0f}"
        pred_x = "" if r["predicted_vs_dense"] is None else f"{r['predicted_vs_dense']:.2f}"
        print(
            f"{r['d_model']:>5} {r['d_ff']:>5} {r['segment_len']:>5} {r['method']:<15} "
            f"{1e3 * r['time_s']:>9.1f} "
            f"{1e3 * r['time_min_s']:>6.0f}-{1e3 * r['time_max_s']:<6.0f} "
            f"{r['vs_dense_paired']:>8.2f} {lo:>5.2f}-{hi:<5.2f} {vs_camex:>8} {pred:>8} "
            f"{pred_x:>7} {r['memory_bytes'] / 2**20:>8.1f}"
        )
    load_end = os.getloadavg()
    print(f"load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        device=str(device),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        processor=platform.processor(),
        layers=args.layers,
        repeats=args.repeats,
        memory="cuda max_memory_allocated" if cuda else "bytes saved for backward",
        precision="bf16 autocast" if cuda else "float32",
        commit=_commit(),
        load_average_start=load_start,
        load_average_end=load_end,
        calibration=None
        if machine is None
        else dict(flops=machine.flops, bandwidth=machine.bandwidth),
        ratios="x dense / x camex: median over repeats of the ratio within each round",
        clock=args.clock,
    )
    path = out / ("moe_layers_quick.json" if args.quick else f"moe_layers_{device.type}.json")
    path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {path}")


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


if __name__ == "__main__":
    main()
