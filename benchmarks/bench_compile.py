"""Training-step time of the GPT, eager against ``torch.compile`` (Inductor), on the CPU.

One step is forward + backward + AdamW step + ``zero_grad`` on a fixed batch of random tokens.
The model is compiled (``torch.compile(model, backend=...)``; every method compiles to one graph,
``fullgraph=True``); the optimizer step runs eagerly in both modes. Each (preset, method, mode)
is warmed up first (for the compiled model this includes the compilation, whose time is
reported), then the timed samples are interleaved round-robin over all of them, so a change of
machine load hits every configuration alike; each sample is the mean of ``--inner`` steps. The
table gives the median of the samples with their spread (min-max), and the speed-up of the
compiled step (eager median / compiled median).

    python benchmarks/bench_compile.py --methods dense,smoe,camex,namex-full-mom --presets tiny
    python benchmarks/bench_compile.py --backend aot_eager --repeats 3   # a quick smoke run

Results go to ``--out`` (default ``runs/bench-compile``) as ``bench_compile.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from nashmoe.models import GPT, GPTConfig
from nashmoe.moe import METHODS


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


class Runner:
    """One model in one mode with its optimizer and batch."""

    def __init__(self, model: GPT, compiled: bool, backend: str, batch, lr: float = 1e-3):
        self.model = model
        self.call = torch.compile(model, backend=backend, fullgraph=True) if compiled else model
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr)
        self.idx, self.targets = batch

    def step(self) -> float:
        out = self.call(self.idx, self.targets)
        loss = out.loss + out.aux_loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="dense,smoe,camex,namex-full-mom")
    p.add_argument("--presets", default="tiny,small")
    p.add_argument("--repeats", type=int, default=10, help="timed samples per configuration")
    p.add_argument("--inner", type=int, default=2, help="steps averaged in one sample")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--vocab-size", type=int, default=96)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench-compile"))
    args = p.parse_args(argv)

    commit, load_at_start = _git_commit(), _load()  # at the start: the code that ran
    methods = [m for m in args.methods.split(",") if m]
    presets = [m for m in args.presets.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    # One compiled GPT per (preset, method): more cache entries than dynamo's default limit.
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)

    runners: dict[tuple[str, str, str], Runner] = {}
    compile_s: dict[tuple[str, str], float] = {}
    first_loss: dict[tuple[str, str, str], float] = {}
    for preset in presets:
        gen = torch.Generator().manual_seed(args.seed)
        for method in methods:
            torch.manual_seed(args.seed)
            cfg = GPTConfig.preset(preset, vocab_size=args.vocab_size, method=method)
            shape = (args.batch_size, cfg.block_size)
            batch = (
                torch.randint(0, args.vocab_size, shape, generator=gen),
                torch.randint(0, args.vocab_size, shape, generator=gen),
            )
            model = GPT(cfg)
            for mode in ("eager", "compiled"):
                key = (preset, method, mode)
                runner = Runner(copy.deepcopy(model), mode == "compiled", args.backend, batch)
                t0 = time.perf_counter()
                first_loss[key] = runner.step()  # compiles the compiled model
                if mode == "compiled":
                    compile_s[(preset, method)] = time.perf_counter() - t0
                    print(
                        f"compiled {preset}/{method} in {compile_s[(preset, method)]:.1f} s",
                        flush=True,
                    )
                for _ in range(args.warmup):
                    runner.step()
                runners[key] = runner

    samples: dict[tuple[str, str, str], list[float]] = {k: [] for k in runners}
    for r in range(args.repeats):
        for key, runner in runners.items():
            t0 = time.perf_counter()
            for _ in range(args.inner):
                runner.step()
            samples[key].append((time.perf_counter() - t0) / args.inner * 1e3)
        print(f"repeat {r + 1}/{args.repeats} done (load {_load()})", flush=True)

    rows = []
    for preset in presets:
        for method in methods:
            row = {"preset": preset, "method": method}
            for mode in ("eager", "compiled"):
                s = samples[(preset, method, mode)]
                row[mode] = {
                    "median_ms": statistics.median(s),
                    "min_ms": min(s),
                    "max_ms": max(s),
                    "samples_ms": s,
                    "first_loss": first_loss[(preset, method, mode)],
                }
            row["compile_s"] = compile_s[(preset, method)]
            row["speedup"] = row["eager"]["median_ms"] / row["compiled"]["median_ms"]
            rows.append(row)

    header = "| preset | method | eager ms/step | compiled ms/step | speed-up | compile s |"
    lines = [header, "|---|---|---|---|---|---|"]
    for row in rows:
        e, c = row["eager"], row["compiled"]
        lines.append(
            f"| {row['preset']} | {row['method']} "
            f"| {e['median_ms']:.1f} ({e['min_ms']:.1f}-{e['max_ms']:.1f}) "
            f"| {c['median_ms']:.1f} ({c['min_ms']:.1f}-{c['max_ms']:.1f}) "
            f"| {row['speedup']:.2f}x | {row['compile_s']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "commit": commit,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "backend": args.backend,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "inner": args.inner,
        "load_at_start": load_at_start,
        "load_at_end": _load(),
    }
    path = args.out / "bench_compile.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows, "table": table}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
