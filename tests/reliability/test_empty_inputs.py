"""Empty inputs: batch 0 and sequence length 0 give empty outputs of the right shape and zero
(finite) auxiliary losses, for every method and routing unit, in training and in evaluation."""

from __future__ import annotations

import pytest
import torch

from nashmoe.models import GPT, GPTConfig
from nashmoe.moe import METHODS, MoEFeedForward

D = 8
SHAPES = [(0, 8), (2, 0), (0, 0)]
CASES = [(m, None) for m in ("dense", "smoe")] + [
    (m, u)
    for m in METHODS
    if m not in ("dense", "smoe")
    for u in ("token", "segment", "sequence", "image")
]


def _chain(method, unit):
    torch.manual_seed(0)
    kw = dict(method=method, d_model=D, d_ff=16, num_experts=3)
    if unit is not None:
        kw["unit"] = unit
    if unit == "segment":
        kw["segment_len"] = 4
    return [MoEFeedForward(**kw, owns_base=(i == 0)) for i in range(2)]


@pytest.mark.parametrize(("method", "unit"), CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_layer_empty_batch_or_sequence(method, unit, training):
    layers = _chain(method, unit)
    for shape in SHAPES:
        x = torch.randn(*shape, D, requires_grad=training)
        h, state = x, None
        with torch.set_grad_enabled(training):
            for layer in layers:
                layer.train(training)
                y, aux = layer(h, state=state, return_aux=True)
                assert y.shape == x.shape, (shape, y.shape)
                for loss in (aux.loss, aux.balance_loss, aux.z_loss):
                    assert torch.isfinite(loss) and loss == 0, (shape, loss)
                if layer.config.propagates:
                    assert aux.state is not None  # the next layer still gets its base expert
                state, h = aux.state, h + y
            if training:
                (h.sum() + aux.loss).backward()
                assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("method", METHODS)
def test_gpt_empty_batch_or_sequence(method):
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=19, block_size=16, n_layer=3, n_head=2, d_model=16, d_ff=32,
            num_experts=3, segment_len=4, method=method,
        )
    )  # fmt: skip
    for training in (True, False):
        model.train(training)
        for shape in SHAPES:
            idx = torch.zeros(shape, dtype=torch.long)
            out = model(idx)
            assert out.logits.shape == (*shape, 19)
            assert out.loss is None
            assert torch.isfinite(out.aux_loss) and out.aux_loss == 0
            assert all(a.loss == 0 for a in out.aux)
            with pytest.raises(ValueError, match="hold no token"):
                model(idx, idx)
