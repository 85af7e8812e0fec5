"""Cost of the merging methods against the number of experts N, with and without ``merge_top_k``.

The soft merge (``merge_top_k=None``, the paper's) merges all N experts for every routing unit,
so its cost grows linearly in N; with ``merge_top_k=k`` each unit gathers only its k selected
experts (cost ∝ k). Every configuration is a residual stack of ``--layers`` blocks
(h ← h + layer(h), propagation included), forward + backward of ``sum(h²)/n + aux``, one step of
``--tokens`` tokens (sequences of 1,024), segment routing with segments of T tokens. For each T,
every configuration (dense; smoe top-2 for every N; each method × N × k) is timed once per
repeat, round-robin (interleaved), and the median and the spread (min–max) over repeats are
reported, with ratios to dense (same T) and to the same method and k at the smallest N.

    python benchmarks/bench_merge_top_k.py --threads 1            # -> runs/bench/merge_top_k.json
    python benchmarks/bench_merge_top_k.py --threads 1 --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from nashmoe.moe import MoEConfig, MoEFeedForward


def build(method, d, f, n, t, k, layers):
    kwargs = dict(method=method, d_model=d, d_ff=f, num_experts=n)
    if method not in ("dense", "smoe"):
        kwargs.update(segment_len=t, merge_top_k=k)
    cfg = MoEConfig(**kwargs)
    return torch.nn.ModuleList(MoEFeedForward(cfg, owns_base=(i == 0)) for i in range(layers))


def step(stack, x):
    h, state, aux_loss = x, None, 0.0
    for layer in stack:
        y, aux = layer(h, state=state, return_aux=True)
        state = aux.state
        aux_loss = aux_loss + aux.loss
        h = h + y
    loss = h.square().mean() + aux_loss
    loss.backward()


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--experts", default="8,16,32,64")
    p.add_argument("--segments", default="64,256")
    p.add_argument("--ks", default="none,2,4")
    p.add_argument("--methods", default="smear,camex,namex-full-mom")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.experts, args.segments, args.repeats, args.tokens = "8,16", "64", 2, 1024
    experts = [int(v) for v in args.experts.split(",")]
    segments = [int(v) for v in args.segments.split(",")]
    ks = [None if v == "none" else int(v) for v in args.ks.split(",")]
    methods = args.methods.split(",")
    d, f = args.d_model, args.d_ff
    batch = max(1, args.tokens // 1024)
    x = torch.randn(batch, args.tokens // batch, d)
    rows = []
    for t in segments:
        configs = [("dense", experts[0], None)]
        configs += [("smoe", n, None) for n in experts]
        configs += [(m, n, k) for m in methods for k in ks for n in experts]
        torch.manual_seed(0)
        stacks = {c: build(c[0], d, f, c[1], t, c[2], args.layers) for c in configs}
        times: dict = {c: [] for c in configs}
        for c in configs:  # warm-up
            step(stacks[c], x)
            stacks[c].zero_grad(set_to_none=True)
        for _ in range(args.repeats):
            for c in configs:
                start = time.perf_counter()
                step(stacks[c], x)
                times[c].append(time.perf_counter() - start)
                stacks[c].zero_grad(set_to_none=True)
        med = {c: statistics.median(v) for c, v in times.items()}
        dense = med[configs[0]]
        for c in configs:
            m, n, k = c
            ref = (m, experts[0], k)
            rows.append(
                dict(
                    method=m,
                    num_experts=None if m == "dense" else n,
                    merge_top_k=k,
                    segment_len=t,
                    time_s=med[c],
                    min_s=min(times[c]),
                    max_s=max(times[c]),
                    vs_dense=med[c] / dense,
                    vs_smallest_n=None if m == "dense" else med[c] / med[ref],
                )
            )
        del stacks
    print(
        f"{'T':>4} {'method':<15} {'k':>4} {'N':>3} {'ms/step':>8} {'min-max':>15} "
        f"{'x dense':>8} {'x N=' + str(experts[0]):>7}"
    )
    for r in rows:
        k = "all" if r["merge_top_k"] is None else str(r["merge_top_k"])
        n = "-" if r["num_experts"] is None else str(r["num_experts"])
        vs_n = "" if r["vs_smallest_n"] is None else f"{r['vs_smallest_n']:.2f}"
        spread = f"{1e3 * r['min_s']:.0f}-{1e3 * r['max_s']:.0f}"
        if r["method"] in ("dense", "smoe"):
            k = "-" if r["method"] == "dense" else "2*"
        print(
            f"{r['segment_len']:>4} {r['method']:<15} {k:>4} {n:>3} {1e3 * r['time_s']:>8.1f} "
            f"{spread:>15} {r['vs_dense']:>8.2f} {vs_n:>7}"
        )
    meta = dict(
        command="python benchmarks/bench_merge_top_k.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "quick"),
        commit=commit(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        d_model=d,
        d_ff=f,
        tokens=args.tokens,
        layers=args.layers,
        repeats=args.repeats,
        note="smoe is top-2 (its own top_k); k applies to the merging methods",
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("merge_top_k_quick.json" if args.quick else "merge_top_k.json")
    path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
