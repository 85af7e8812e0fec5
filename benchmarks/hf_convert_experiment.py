"""Convert small trained MoE language models (transformers classes) to every method.

For each family (Mixtral and Qwen2-MoE by default) a small ``XxxForCausalLM`` is trained from
scratch on tiny-shakespeare (characters, shipped with nashmoe) until its validation perplexity is
reasonable. Then, for every method and seed, a copy is converted with :func:`nashmoe.hf.convert`
and we measure the validation perplexity

- right after conversion (zero-shot: only ``smoe`` computes the original function), and
- after a short fine-tune, the same steps, batches and learning rate for every method (the seed
  chooses the fine-tuning batches; ``smoe`` is the "keep training the original" control).

Writes ``results.json`` (every number, the settings, the timings) and ``results.md`` (a table of
mean ± std over seeds) into ``--out``.

    python benchmarks/hf_convert_experiment.py --out runs/hf_convert            # full (≤100 min)
    python benchmarks/hf_convert_experiment.py --out /tmp/smoke --preset smoke  # ≈1 min

The full preset is sized for at most 100 minutes on 2 CPU cores (measured step times and the
estimate are in PRESETS; the full run has not been made yet). Methods use ``segment_len`` 16
(4 segments per block) and, for the CAMEx family, the base ``shared`` (Qwen2-MoE) or ``mean``
(Mixtral: the domain vectors then sum to zero, so NAMEx's bargaining at the first layer is
infeasible; see :func:`nashmoe.hf.convert`). ``--anchored`` anchors every propagating layer's
base to its own experts.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PRESETS = {
    # Sizing, measured at this preset on the 2 shared CPU cores (load average about 6, so
    # timings vary 2-5x; 2026-11-30): pretraining 0.6-1.2 s/step, fine-tuning 0.3-1.8 s/step
    # (namex-full-mom slowest), 1.6-4.5 s per evaluation of 8192 tokens. Estimate: pretraining
    # 2 x 1000 x 0.9 s = 30 min; 48 fine-tunes x (60 x 0.8 s + 2 x 3 s) = 43 min; about 75 min
    # in all at that load (about 40 min on an idle machine), within 100 minutes.
    "full": dict(
        d_model=64,
        layers=4,
        heads=4,
        experts=4,
        top_k=2,
        d_ff=128,
        block=64,
        batch=16,
        pretrain_steps=1000,
        finetune_steps=60,
        pretrain_lr=3e-3,
        finetune_lr=1e-3,
        segment_len=16,
        eval_tokens=8192,
        seeds=3,
    ),
    "smoke": dict(
        d_model=32,
        layers=2,
        heads=2,
        experts=4,
        top_k=2,
        d_ff=64,
        block=64,
        batch=8,
        pretrain_steps=30,
        finetune_steps=5,
        pretrain_lr=3e-3,
        finetune_lr=1e-3,
        segment_len=16,
        eval_tokens=2048,
        seeds=1,
    ),
}
METHODS = (
    "smoe",
    "smear",
    "camex",
    "ep-camex",
    "namex",
    "namex-full",
    "namex-mom",
    "namex-full-mom",
)


def build(family: str, vocab: int, p: dict, seed: int):
    import transformers

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab,
        hidden_size=p["d_model"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["heads"],
        max_position_embeddings=p["block"],
        num_experts_per_tok=p["top_k"],
        tie_word_embeddings=True,
    )
    if family == "mixtral":
        cfg = transformers.MixtralConfig(
            **common, intermediate_size=p["d_ff"], num_local_experts=p["experts"]
        )
        return transformers.MixtralForCausalLM(cfg)
    if family == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(
            **common,
            intermediate_size=p["d_ff"],
            moe_intermediate_size=p["d_ff"],
            shared_expert_intermediate_size=p["d_ff"],
            num_experts=p["experts"],
            decoder_sparse_step=1,
            norm_topk_prob=False,
        )
        return transformers.Qwen2MoeForCausalLM(cfg)
    raise ValueError(f"unknown family {family!r}")


def evaluate(model, data: torch.Tensor, p: dict) -> float:
    from nashmoe.data import IGNORE_INDEX, iter_eval_batches

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in iter_eval_batches(
            data[: p["eval_tokens"] + 1], batch_size=p["batch"], block_size=p["block"]
        ):
            logits = model(input_ids=x, use_cache=False).logits
            total += float(
                F.cross_entropy(
                    logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
                )
            )
            count += int((y != IGNORE_INDEX).sum())
    return math.exp(total / count)


def train(model, data: torch.Tensor, steps: int, lr: float, p: dict, seed: int) -> list[float]:
    from nashmoe.data import get_batch

    model.train()
    model.config.output_router_logits = True
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    coef = float(getattr(model.config, "router_aux_loss_coef", 0.0) or 0.0)
    losses = []
    warmup = max(1, steps // 20)
    for step in range(steps):
        for group in opt.param_groups:  # warm-up then cosine
            frac = step / max(1, steps - 1)
            scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
            group["lr"] = lr * max(scale, 0.1)
        x, y = get_batch(data, batch_size=p["batch"], block_size=p["block"], generator=g)
        out = model(input_ids=x, use_cache=False)
        ce = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
        loss = ce if out.aux_loss is None else ce + coef * out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(ce.detach()))
    model.config.output_router_logits = False
    return losses


def table(results: dict, families: list[str], methods: list[str]) -> str:
    lines = [
        "| family | method | zero-shot ppl | fine-tuned ppl |",
        "|---|---|---|---|",
    ]

    def fmt(values: list[float]) -> str:
        if not values:
            return "—"
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    for family in families:
        fam = results["families"][family]
        lines.append(f"| {family} | original (trained) | {fam['original_ppl']:.3f} | — |")
        for method in methods:
            runs = fam["methods"].get(method, [])
            zero = [r["zero_shot_ppl"] for r in runs]
            tuned = [r["finetuned_ppl"] for r in runs]
            lines.append(f"| {family} | {method} | {fmt(zero)} | {fmt(tuned)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--families", default="mixtral,qwen2_moe")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=None, help="override the preset's seeds")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="override the preset")
    parser.add_argument("--finetune-steps", type=int, default=None, help="override the preset")
    parser.add_argument("--eval-tokens", type=int, default=None, help="override the preset")
    parser.add_argument(
        "--anchored",
        action="store_true",
        help="propagating methods: every layer's base anchored to its own experts",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    import nashmoe.hf as hf
    from nashmoe.data import load_corpus

    if args.threads:
        torch.set_num_threads(args.threads)
    p = dict(PRESETS[args.preset])
    for key in ("seeds", "pretrain_steps", "finetune_steps", "eval_tokens"):
        if getattr(args, key) is not None:
            p[key] = getattr(args, key)
    families = args.families.split(",")
    methods = args.methods.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus("shakespeare")
    vocab = corpus.tokenizer.vocab_size
    results: dict = {
        "settings": {**p, "anchored": args.anchored},
        "families": {},
        "timings": {},
    }
    t_all = time.perf_counter()
    for family in families:
        t0 = time.perf_counter()
        model = build(family, vocab, p, seed=0)
        curve = train(model, corpus.train, p["pretrain_steps"], p["pretrain_lr"], p, seed=0)
        t_pre = time.perf_counter() - t0
        base_ppl = evaluate(model, corpus.validation, p)
        print(f"{family}: pretrained {t_pre:.0f}s, valid ppl {base_ppl:.3f}", file=sys.stderr)
        fam = {"original_ppl": base_ppl, "pretrain_loss": curve[-10:], "methods": {}}
        results["timings"][f"{family}/pretrain_s"] = t_pre
        for method in methods:
            options = {} if method in ("smoe",) else {"segment_len": p["segment_len"]}
            if method in ("camex", "ep-camex") or method.startswith("namex"):
                options["base"] = "shared" if family == "qwen2_moe" else "mean"
            if args.anchored and (method == "ep-camex" or method.startswith("namex")):
                options["anchored"] = True
            runs = []
            for seed in range(p["seeds"]):
                t1 = time.perf_counter()
                converted = hf.convert(copy.deepcopy(model), method, **options)
                zero = evaluate(converted, corpus.validation, p)
                train(converted, corpus.train, p["finetune_steps"], p["finetune_lr"], p, 1 + seed)
                tuned = evaluate(converted, corpus.validation, p)
                dt = time.perf_counter() - t1
                runs.append(
                    {"seed": seed, "zero_shot_ppl": zero, "finetuned_ppl": tuned, "seconds": dt}
                )
                print(
                    f"{family} {method} seed {seed}: zero-shot {zero:.3f}, "
                    f"fine-tuned {tuned:.3f} ({dt:.0f}s)",
                    file=sys.stderr,
                )
            fam["methods"][method] = runs
        results["families"][family] = fam
        (out / "results.json").write_text(json.dumps(results, indent=2))
    results["timings"]["total_s"] = time.perf_counter() - t_all
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table(results, families, methods))
    print(table(results, families, methods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
