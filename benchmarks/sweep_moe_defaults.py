"""The sweep behind the MoE layers' defaults (η, curvature, TIES mask, γ, momentum r and φ).

Trains the ``tiny`` GPT on tiny-shakespeare (characters) for a short, fixed budget per setting and
reports the exact validation loss at the end, the mean ‖∂L/∂E_m^(1)‖ over training (zero would mean
the merge collapsed to SMEAR and the base expert does nothing) and the step time. Same data order,
initialisation seed and optimizer for every setting; two seeds by default.

    python benchmarks/sweep_moe_defaults.py --out runs/sweep           # the documented sweep
    python benchmarks/sweep_moe_defaults.py --quick                    # a smoke run

Writes ``sweep.json`` and prints a table; docs/design.md records the result and the choice.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from nashmoe.data import get_batch, iter_eval_batches, load_corpus
from nashmoe.models import GPT, GPTConfig
from nashmoe.moe import MoEConfig

# (group, method, moe_options)
GRID: list[tuple[str, str, dict]] = [
    ("reference", "dense", {}),
    ("reference", "smear", {}),
    # merge step, curvature and mask (CAMEx)
    ("camex", "camex", {"eta": 1.0, "curvature_rank": 0}),  # the collapse to SMEAR
    ("camex", "camex", {"eta": 2.0, "curvature_rank": 0}),
    ("camex", "camex", {"eta": 4.0, "curvature_rank": 0}),
    ("camex", "camex", {"eta": 2.0, "curvature_rank": 1, "curvature_init": 1.0}),
    ("camex", "camex", {"eta": 1.0, "curvature_rank": 1, "curvature_init": 8.0**0.25}),
    ("camex", "camex", {"eta": 2.0, "curvature_rank": 0, "merge_mask": "ties"}),
    # propagation step (NAMEx-Full)
    ("gamma", "namex-full", {"gamma": 0.3}),
    ("gamma", "namex-full", {"gamma": 1.0}),
    ("gamma", "namex-full", {"gamma": 3.0}),
    ("gamma", "namex-full", {"gamma": 1.0, "step_norm": "mean"}),
    # complex momentum (NAMEx-Full-Mom)
    ("momentum", "namex-full-mom", {"momentum": 0.3, "momentum_angle": math.pi / 6}),
    ("momentum", "namex-full-mom", {"momentum": 0.5, "momentum_angle": math.pi / 6}),
    ("momentum", "namex-full-mom", {"momentum": 0.8, "momentum_angle": math.pi / 6}),
    ("momentum", "namex-full-mom", {"momentum": 0.5, "momentum_angle": 0.0}),
    ("momentum", "namex-full-mom", {"momentum": 0.5, "momentum_angle": math.pi / 12}),
]


def base_grad_norm(model: GPT) -> float:
    layers = model.moe_layers
    if not layers or layers[0].base_tensors() is None:
        return float("nan")
    total = 0.0
    for p in layers[0].base_tensors().values():
        if p.grad is not None:
            total += float(p.grad.square().sum())
    return math.sqrt(total)


@torch.no_grad()
def evaluate(model: GPT, data: torch.Tensor, block: int, batch: int) -> float:
    model.eval()
    total, count = 0.0, len(data) - 1
    for x, y in iter_eval_batches(data, batch_size=batch, block_size=block):
        logits = model(x).logits
        total += float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                y.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
        )
    model.train()
    return total / count


def train_one(method, options, corpus, *, seed, steps, batch, lr, preset) -> dict:
    torch.manual_seed(seed)
    cfg = GPTConfig.preset(preset, vocab_size=corpus.vocab_size, method=method, moe_options=options)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(1234 + seed)
    warmup = max(1, steps // 10)
    grads, times = [], []
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.1)
        x, y = get_batch(corpus.train, batch_size=batch, block_size=cfg.block_size, generator=gen)
        start = time.perf_counter()
        out = model(x, y)
        (out.loss + out.aux_loss).backward()
        grads.append(base_grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    valid = evaluate(model, corpus.validation, cfg.block_size, batch)
    finite = [g for g in grads if not math.isnan(g)]
    return dict(
        valid_loss=valid,
        base_grad_mean=statistics.mean(finite) if finite else None,
        step_ms=1e3 * statistics.median(times),
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--groups", default="", help="comma-separated subset of groups")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.steps, args.seeds = 20, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_corpus("shakespeare")
    grid = [g for g in GRID if not args.groups or g[0] in args.groups.split(",")]
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    defaults = MoEConfig(method="namex-full-mom", d_model=8, d_ff=8).to_dict()
    meta = dict(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seeds=args.seeds,
        preset=args.preset,
        corpus="shakespeare/char",
        torch=torch.__version__,
        moe_defaults=defaults,
    )
    for group, method, options in grid:
        runs = [
            train_one(
                method,
                options,
                corpus,
                seed=s,
                steps=args.steps,
                batch=args.batch,
                lr=args.lr,
                preset=args.preset,
            )
            for s in range(args.seeds)
        ]
        losses = [r["valid_loss"] for r in runs]
        row = dict(
            group=group,
            method=method,
            options=options,
            valid_loss_mean=statistics.mean(losses),
            valid_loss_std=statistics.stdev(losses) if len(losses) > 1 else 0.0,
            base_grad_mean=runs[0]["base_grad_mean"],
            step_ms=statistics.mean(r["step_ms"] for r in runs),
            runs=runs,
        )
        rows.append(row)
        opts = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items()
        )
        grad = "-" if row["base_grad_mean"] is None else f"{row['base_grad_mean']:.2e}"
        print(
            f"{group:<9} {method:<15} {opts:<48} valid {row['valid_loss_mean']:.4f} "
            f"± {row['valid_loss_std']:.4f}  |dL/dEm1| {grad:>9}  {row['step_ms']:.0f} ms",
            flush=True,
        )
        (out / "sweep.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {out / 'sweep.json'}")


if __name__ == "__main__":
    main()
