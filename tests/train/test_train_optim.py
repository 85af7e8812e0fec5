"""Learning-rate schedule against a naive reference; AdamW parameter groups."""

from __future__ import annotations

import itertools
import math

import pytest

from nashmoe.models import GPT, GPTConfig
from nashmoe.train import lr_at, param_groups


def _naive(step, lr, min_lr, warmup, total):
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - 1 - warmup)
    frac = min(frac, 1.0)
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * frac)) / 2


@pytest.mark.parametrize(("warmup", "total"), [(0, 10), (3, 10), (10, 100), (1, 1)])
def test_lr_schedule_matches_reference(warmup, total):
    for step in range(total + 3):
        got = lr_at(step, lr=1e-3, min_lr=1e-4, warmup=warmup, total=total)
        assert got == pytest.approx(_naive(step, 1e-3, 1e-4, warmup, total))


def test_lr_schedule_shape():
    lrs = [lr_at(s, lr=1.0, min_lr=0.1, warmup=5, total=50) for s in range(50)]
    assert lrs[4] == 1.0  # end of warm-up: the peak
    assert all(a <= b for a, b in itertools.pairwise(lrs[:5]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[-1] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        lr_at(-1, lr=1.0, min_lr=0.1, warmup=5, total=50)


def test_weight_decay_groups():
    model = GPT(
        GPTConfig(
            vocab_size=20,
            method="camex",
            moe_options={"curvature_rank": 1},  # a learned curvature, to check its group
            n_layer=2,
            d_model=16,
            d_ff=32,
            n_head=2,
            block_size=16,
            segment_len=8,
        )
    )
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "blocks.0.ffn.w_in" in decayed and "blocks.0.attn.qkv.weight" in decayed
    assert "blocks.0.ffn.router" in decayed and "wte.weight" in decayed
    assert "blocks.0.ln_1.weight" in kept and "blocks.0.ffn.prior_logits" in kept
    assert any(".curvature." in n for n in kept)  # curvature starts at c·I: not decayed
    assert not any(".curvature." in n for n in decayed)
    assert len(decayed) + len(kept) == len(list(model.parameters()))
