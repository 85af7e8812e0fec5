"""The MoE language model: causality for every method, exact cached generation, shapes, errors."""

from __future__ import annotations

import pytest
import torch

from nashmoe.models import GPT, GPTConfig
from nashmoe.moe import METHODS, PROPAGATING_METHODS


def tiny(method, **kw):
    torch.manual_seed(0)
    fields = dict(
        vocab_size=23,
        block_size=24,
        n_layer=3,
        n_head=2,
        d_model=16,
        d_ff=32,
        num_experts=3,
        segment_len=4,
        method=method,
        init_std=0.2,
    )
    fields.update(kw)
    return GPT(GPTConfig(**fields))


def _reset(model):
    for layer in model.moe_layers:
        if hasattr(layer, "alpha_prev"):
            layer.alpha_prev.zero_()


@pytest.mark.parametrize("method", METHODS)
def test_model_is_causal(method):
    model = tiny(method)
    idx = torch.randint(0, 23, (2, 19))
    _reset(model)
    base = model(idx).logits
    for t in (0, 3, 4, 9, 17):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 5) % 23
        _reset(model)
        logits = model(changed).logits
        assert torch.equal(logits[:, : t + 1], base[:, : t + 1]), f"{method}: {t} saw {t + 1}"
        assert not torch.equal(logits[:, t + 1], base[:, t + 1])


@pytest.mark.parametrize("method", METHODS)
def test_cached_greedy_generation_equals_full_forward_passes(method):
    model = tiny(method, moe_every=2 if method == "namex" else 1)
    with torch.no_grad():  # make the logits peaked so greedy decoding is stable
        model.lm_head.weight.mul_(20)
    prompt = torch.randint(0, 23, (2, 3))
    cached = model.generate(prompt, 18, temperature=0, use_cache=True)
    full = model.generate(prompt, 18, temperature=0, use_cache=False)
    assert torch.equal(cached, full)
    # and the cached logits themselves match a full forward of the final sequence
    model.eval()
    with torch.no_grad():
        cache = model.new_cache()
        seq = cached[:, :21]
        steps = [model(seq[:, :5], cache=cache, start_pos=0).logits]
        for t in range(5, 21):
            steps.append(model(seq[:, t : t + 1], cache=cache, start_pos=t).logits)
        torch.testing.assert_close(torch.cat(steps, 1), model(seq).logits, atol=1e-4, rtol=1e-4)


def test_generation_beyond_block_size_falls_back_to_a_window():
    model = tiny("smear")
    out = model.generate(torch.zeros(1, 2, dtype=torch.long), 30, temperature=0)
    assert out.shape == (1, 32)


def test_sampling_is_reproducible_with_a_generator():
    model = tiny("namex-full-mom")
    prompt = torch.zeros(1, 1, dtype=torch.long)
    a = model.generate(prompt, 10, top_k=5, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 10, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_parameter_counts():
    dense = tiny("dense").num_parameters()
    assert dense["total"] == dense["active"]
    smoe = tiny("smoe", top_k=2).num_parameters()
    per_expert = 2 * 16 * 32
    assert smoe["total"] - smoe["active"] == 3 * (3 - 2) * per_expert
    namex = tiny("namex").num_parameters()
    assert namex["total"] - namex["active"] == 3 * (3 - 1) * per_expert


def test_loss_training_step_and_moe_every():
    model = tiny("namex-full-mom", moe_every=2)
    assert [b.ffn.config.method for b in model.blocks] == ["dense", "namex-full-mom", "dense"]
    assert model.moe_layers[0].owns_base
    idx = torch.randint(0, 23, (2, 12))
    out = model(idx, idx)
    assert len(out.aux) == 1 and out.loss.ndim == 0
    (out.loss + out.aux_loss).backward()
    assert model.moe_layers[0].base_w_in.grad.abs().sum() > 0


def test_tied_embeddings():
    model = tiny("dense")
    assert model.lm_head.weight is model.wte.weight
    untied = tiny("dense", tie_embeddings=False)
    assert untied.lm_head.weight is not untied.wte.weight


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="nope"), "unknown method"),
        (dict(method="camex", segment_len=5), "must divide block_size"),
        (dict(d_model=15), "not divisible by n_head"),
        (dict(moe_options={"gama": 1.0}), "unknown MoE option"),
        (dict(moe_options={"momentum": 2.0}, method="namex-mom"), "momentum r must be"),
        (dict(moe_every=0), "moe_every"),
        (dict(vocab_size=0), "vocab_size"),
    ],
)
def test_bad_configs(kwargs, message):
    fields = dict(
        vocab_size=23, block_size=24, n_layer=2, n_head=2, d_model=16, d_ff=32, segment_len=8
    )
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        GPTConfig(**fields)


def test_presets_and_too_long_input():
    cfg = GPTConfig.preset("small", vocab_size=100, method="smoe")
    assert (cfg.n_layer, cfg.d_model, cfg.num_experts, cfg.block_size) == (3, 128, 16, 256)
    cfg = GPTConfig.preset("medium", vocab_size=100, method="camex")
    assert (cfg.n_layer, cfg.d_model, cfg.block_size) == (6, 352, 512)
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.preset("huge", vocab_size=10)
    with pytest.raises(ValueError, match="exceeds block_size"):
        tiny("dense")(torch.zeros(1, 25, dtype=torch.long))


# ---------------------------------------------------------------- activation checkpointing
@pytest.fixture
def one_thread():
    """Tiny models: intra-op threads only add synchronisation on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grads(model, batches, checkpointing):
    """Parameter gradients of the summed loss over ``batches`` (all forwards, then one backward)."""
    model.zero_grad()
    if checkpointing is None:
        model.gradient_checkpointing_disable()
    else:
        model.gradient_checkpointing_enable({"use_reentrant": checkpointing})
    total = 0
    for idx in batches:
        out = model(idx, idx)
        total = total + out.loss + out.aux_loss
    total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", [*PROPAGATING_METHODS, "camex", "smear", "smoe"])
def test_gradient_checkpointing_gives_the_plain_gradients(method):
    model = tiny(method, block_size=16, d_model=8, d_ff=16).double()
    torch.manual_seed(1)
    # two forward passes before one backward (gradient accumulation, micro-batches)
    batches = [torch.randint(0, 23, (2, 16)), torch.randint(0, 23, (1, 11))]
    expected = _grads(model, batches, None)
    if method in PROPAGATING_METHODS:
        assert expected["blocks.0.ffn.base_w_in"].abs().sum() > 0
    for reentrant in (False, True):
        got = _grads(model, batches, reentrant)
        assert model.is_gradient_checkpointing
        assert got.keys() == expected.keys()
        for name, g in expected.items():
            err = (got[name] - g).norm() / g.norm().clamp_min(1e-300)
            assert err <= 1e-8, f"{method} reentrant={reentrant} {name}: {err:.2e}"
    # evaluation and cached generation are unaffected by the setting
    model.eval()
    with torch.no_grad():
        idx = batches[0][:, :9]
        logits = model(idx).logits
        model.gradient_checkpointing_disable()
        torch.testing.assert_close(model(idx).logits, logits)
    assert not model.is_gradient_checkpointing


def test_last_moe_block_skips_its_propagation_step():
    model = tiny("namex-full", n_layer=3).double()
    last = model.moe_layers[-1]
    assert last.last_in_chain and not model.moe_layers[0].last_in_chain
    idx = torch.randint(0, 23, (2, 12))
    out = model(idx)
    assert out.aux[-1].state is None and not out.aux[-1].solved
    assert torch.equal(out.aux[-1].alpha, out.aux[-2].alpha)  # the incoming α, for the logs
    assert out.aux[-2].solved and out.aux[-2].state is not None
    assert bool((last.alpha_prev == 0).all())  # never solved
    last.last_in_chain = False  # the skipped step changes nothing upstream of the output
    torch.testing.assert_close(model(idx).logits, out.logits, rtol=1e-12, atol=1e-12)
    assert model.moe_layers[-1].last_aux.solved
