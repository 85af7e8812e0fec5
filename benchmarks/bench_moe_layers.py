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
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from nashmoe.moe import METHODS, MoEConfig, MoEFeedForward


def build(method: str, d: int, f: int, n: int, t: int, layers: int, device, dtype):
    kwargs = dict(method=method, d_model=d, d_ff=f, num_experts=n)
    if method not in ("dense", "smoe"):
        kwargs["segment_len"] = t
    cfg = MoEConfig(**kwargs)
    stack = torch.nn.ModuleList(MoEFeedForward(cfg, owns_base=(i == 0)) for i in range(layers)).to(
        device=device, dtype=dtype
    )
    return stack


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


def bench_shape(d, f, n, t, tokens, layers, methods, repeats, device, dtype, autocast):
    batch = max(1, tokens // 1024) if t <= 1024 else 1
    seq = tokens // batch
    x = torch.randn(batch, seq, d, device=device, dtype=dtype, requires_grad=False)
    stacks = {m: build(m, d, f, n, t, layers, device, dtype) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    ctx = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if autocast
        else torch.autocast(device.type, enabled=False)
    )
    with ctx:
        for m in methods:  # warm-up
            step(stacks[m], x)
            stacks[m].zero_grad(set_to_none=True)
        for _ in range(repeats):
            for m in methods:
                sync(device)
                start = time.perf_counter()
                step(stacks[m], x)
                sync(device)
                times[m].append(time.perf_counter() - start)
                stacks[m].zero_grad(set_to_none=True)
        rows = []
        for m in methods:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                step(stacks[m], x)
                memory = torch.cuda.max_memory_allocated()
                stacks[m].zero_grad(set_to_none=True)
            else:
                memory = saved_bytes(stacks[m], x)
            rows.append(dict(method=m, time_s=statistics.median(times[m]), memory_bytes=memory))
    dense = next(r["time_s"] for r in rows if r["method"] == "dense")
    camex = next((r["time_s"] for r in rows if r["method"] == "camex"), None)
    dense_mem = next(r["memory_bytes"] for r in rows if r["method"] == "dense")
    for r in rows:
        r.update(
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
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
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
        )
    header = (
        f"{'d':>5} {'f':>5} {'T':>5} {'method':<15} {'ms/step':>9} {'x dense':>8} "
        f"{'x camex':>8} {'mem MB':>8} {'mem x':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        vs_camex = "" if r["vs_camex"] is None else f"{r['vs_camex']:.2f}"
        print(
            f"{r['d_model']:>5} {r['d_ff']:>5} {r['segment_len']:>5} {r['method']:<15} "
            f"{1e3 * r['time_s']:>9.1f} {r['vs_dense']:>8.2f} {vs_camex:>8} "
            f"{r['memory_bytes'] / 2**20:>8.1f} {r['memory_vs_dense']:>6.2f}"
        )
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
    )
    path = out / ("moe_layers_quick.json" if args.quick else f"moe_layers_{device.type}.json")
    path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
