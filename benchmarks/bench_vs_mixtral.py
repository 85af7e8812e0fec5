"""Training-step time of our smoe GPT against transformers' MixtralForCausalLM at equal shape.

Both models: the same width, depth, heads, vocabulary, N = 8 SwiGLU experts (d → f, silu gate,
no bias), top-2 routing renormalised over the chosen two, tied embeddings, the same batch of
token ids. Differences that remain (stated in the output): our GPT uses LayerNorm and learned
absolute positions, Mixtral RMSNorm and rotary positions. A step is forward + cross-entropy (+ the
auxiliary loss) + backward; no optimizer. Models are timed round-robin (every repeat runs every
model once); the table gives medians with min-max and the per-round ratio against Mixtral
(median and range), in wall time and in process CPU time (which excludes time spent descheduled
on a shared machine). Mixtral runs with each of transformers' expert implementations available
(``eager``: a loop over experts; ``grouped_mm``; ``batched_mm``, measured 40-50x slower on
the CPU, only on request).

    python benchmarks/bench_vs_mixtral.py --threads 1 --repeats 7   # -> runs/bench/vs_mixtral.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nashmoe.models import GPT, GPTConfig


def ours(args):
    cfg = GPTConfig(
        vocab_size=args.vocab,
        block_size=args.seq,
        n_layer=args.layers,
        n_head=args.heads,
        d_model=args.d,
        d_ff=args.f,
        method="smoe",
        num_experts=8,
        top_k=2,
        moe_options=dict(glu=True, activation="silu"),
    )
    return GPT(cfg)


def mixtral(args, impl):
    import transformers

    cfg = transformers.MixtralConfig(
        vocab_size=args.vocab,
        hidden_size=args.d,
        intermediate_size=args.f,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.seq,
        num_local_experts=8,
        num_experts_per_tok=2,
        tie_word_embeddings=True,
        router_aux_loss_coef=0.01,
        output_router_logits=True,
    )
    cfg._attn_implementation = "sdpa"
    cfg._experts_implementation = impl
    return transformers.MixtralForCausalLM(cfg)


def step_ours(model, idx, targets):
    out = model(idx, targets)
    (out.loss + out.aux_loss).backward()


def step_mixtral(model, idx, targets):
    out = model(input_ids=idx)
    loss = F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten())
    if getattr(out, "aux_loss", None) is not None:
        loss = loss + 0.01 * out.aux_loss
    loss.backward()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--f", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--impls", default="eager,grouped_mm", help="also: batched_mm (~50x slower)")
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    models = {"nashmoe smoe GPT": (ours(args), step_ours)}
    for impl in args.impls.split(","):
        try:
            models[f"Mixtral ({impl})"] = (mixtral(args, impl), step_mixtral)
        except Exception as exc:  # an implementation this transformers build lacks
            print(f"skipped Mixtral ({impl}): {exc!r}")
    idx = torch.randint(0, args.vocab, (args.batch, args.seq))
    targets = torch.randint(0, args.vocab, (args.batch, args.seq))
    params = {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in models.items()}
    for name, (model, fn) in list(models.items()):  # warm-up (and drop what fails)
        try:
            fn(model, idx, targets)
            model.zero_grad(set_to_none=True)
        except Exception as exc:
            print(f"skipped {name}: {exc!r}")
            del models[name]
    wall = {k: [] for k in models}
    cpu = {k: [] for k in models}
    for _ in range(args.repeats):
        for name, (model, fn) in models.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn(model, idx, targets)
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
            model.zero_grad(set_to_none=True)
    ref = "Mixtral (eager)" if "Mixtral (eager)" in models else next(iter(models))
    rows = []
    for name in models:
        row = dict(model=name, parameters=params[name])
        for clock, t in (("wall", wall), ("cpu", cpu)):
            ratios = [a / b for a, b in zip(t[name], t[ref])]
            row[clock] = dict(
                median_s=statistics.median(t[name]),
                min_s=min(t[name]),
                max_s=max(t[name]),
                times_s=t[name],
                vs_ref=statistics.median(ratios),
                vs_ref_range=(min(ratios), max(ratios)),
            )
        rows.append(row)
    load_end = os.getloadavg()
    header = (
        f"{'model':<24} {'params':>9} {'wall ms':>8} {'min-max':>11} {'x ref':>6} {'(range)':>11}"
        f" {'cpu ms':>8} {'x ref':>6} {'(range)':>11}"
    )
    print(f"reference: {ref}; {args.batch}x{args.seq} tokens, d={args.d}, f={args.f}, "
          f"{args.layers} layers, {args.threads} thread(s)")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in rows:
        w, c = r["wall"], r["cpu"]
        print(
            f"{r['model']:<24} {r['parameters']:>9,} {1e3 * w['median_s']:>8.1f} "
            f"{1e3 * w['min_s']:>5.0f}-{1e3 * w['max_s']:<5.0f} {w['vs_ref']:>6.2f} "
            f"{w['vs_ref_range'][0]:>5.2f}-{w['vs_ref_range'][1]:<5.2f} "
            f"{1e3 * c['median_s']:>8.1f} {c['vs_ref']:>6.2f} "
            f"{c['vs_ref_range'][0]:>5.2f}-{c['vs_ref_range'][1]:<5.2f}"
        )
    print(f"load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(vars(args), torch=torch.__version__, reference=ref, load_start=load_start,
                load_end=load_end)  # fmt: skip
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    path = out / "vs_mixtral.json"
    path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
