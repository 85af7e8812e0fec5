"""MoE layers inside third-party (transformers) models, linked with ``link_moe_layers``:
activation checkpointing gives the gradients of a plain backward, and cached decoding on new
tokens only gives the logits of a full pass and the tokens of uncached generation."""

from __future__ import annotations

import warnings

import pytest
import torch

from nashmoe.moe import (
    METHODS,
    PROPAGATING_METHODS,
    MoEConfig,
    MoEFeedForward,
    MoEMLP,
    link_moe_layers,
)

transformers = pytest.importorskip("transformers")

VOCAB, D, F, LAYERS = 29, 16, 32, 3


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add synchronisation (10x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _moe_config(method: str, arch: str) -> MoEConfig:
    fields = dict(method=method, d_model=D, d_ff=F, num_experts=3, init_std=0.2)
    if arch == "llama":
        fields.update(glu=True, activation="silu")
    else:
        fields.update(activation="gelu_tanh")
    if method in METHODS[2:]:  # the merging methods: segments of 4 tokens
        fields.update(segment_len=4)
    return MoEConfig(**fields)


def _model(method: str, arch: str, seed: int = 0):
    """A tiny transformers causal LM (float64, no dropout) whose MLPs are MoE layers."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    if arch == "gpt2":
        config = transformers.GPT2Config(
            n_positions=32, n_embd=D, n_layer=LAYERS, n_head=2, n_inner=F, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False, **common,
        )  # fmt: skip
        model = transformers.GPT2LMHeadModel(config)
        blocks = model.transformer.h
    else:
        config = transformers.LlamaConfig(
            hidden_size=D, intermediate_size=F, num_hidden_layers=LAYERS, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=32, **common,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(config)
        blocks = model.model.layers
    cfg = _moe_config(method, arch)
    for i, block in enumerate(blocks):
        block.mlp = MoEMLP(MoEFeedForward(cfg, owns_base=(i == 0)))
    model = model.double()
    with torch.no_grad():  # peaked logits, so that greedy decoding is stable
        model.lm_head.weight.mul_(20)
    link_moe_layers(model)
    return model


def _checkpointing(model, reentrant: bool | None, every: int = 1) -> None:
    """transformers' ``gradient_checkpointing_enable`` (``None``: disable)."""
    with warnings.catch_warnings():  # transformers 5 renames it activation_checkpointing_*
        warnings.simplefilter("ignore", FutureWarning)
        if reentrant is None:
            model.gradient_checkpointing_disable()
        else:
            kwargs = {"use_reentrant": reentrant}
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=kwargs, every_n_layers=every
            )


# ---------------------------------------------------------------- activation checkpointing
@pytest.mark.parametrize(
    "method, arch",
    [(m, "gpt2") for m in (*PROPAGATING_METHODS, "camex", "smear", "smoe")]
    + [("namex-full-mom", "llama"), ("ep-camex", "llama")],
)
def test_checkpointing_gives_the_plain_gradients(method, arch):
    model = _model(method, arch).train()
    idx = torch.randint(1, VOCAB, (2, 10))

    def grads():
        model.zero_grad()
        model(input_ids=idx, labels=idx).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected = grads()
    if method in PROPAGATING_METHODS:
        assert expected["transformer.h.0.mlp.moe.base_w_in" if arch == "gpt2" else
                        "model.layers.0.mlp.moe.base_w_in"].abs().sum() > 0  # fmt: skip
    # every second block only: a block that keeps its graph follows one that ran under no_grad
    for reentrant, every in ((False, 1), (True, 1), (True, 2)):
        _checkpointing(model, reentrant, every)
        got = grads()
        assert got.keys() == expected.keys()
        for name, g in expected.items():
            err = (got[name] - g).norm() / g.norm().clamp_min(1e-300)
            assert err <= 1e-8, f"{method} reentrant={reentrant}/{every} {name}: {err:.2e}"
        _checkpointing(model, None)


# ---------------------------------------------------------------- cached decoding
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", METHODS)
def test_cached_decoding_on_new_tokens_is_exact(method, arch):
    model = _model(method, arch).eval()
    for prompt_len in (3, 9):  # shorter and longer than a segment of 4
        prompt = torch.randint(1, VOCAB, (2, prompt_len))
        with torch.no_grad():
            cached = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True)
            full = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False)
            assert torch.equal(cached, full), (method, arch, prompt_len)
            # incremental logits (prompt, then one token at a time) equal one full pass
            seq = cached
            out = model(input_ids=seq[:, :prompt_len], use_cache=True)
            steps, past = [out.logits], out.past_key_values
            for t in range(prompt_len, seq.shape[1]):
                out = model(input_ids=seq[:, t : t + 1], cache=past, use_cache=True)
                steps.append(out.logits)
                past = out.past_key_values
            reference = model(input_ids=seq).logits
        torch.testing.assert_close(torch.cat(steps, dim=1), reference, rtol=1e-4, atol=1e-6)


def test_cached_decoding_with_the_model_defaults_and_a_positional_cache():
    """A plain prompt call (transformers builds a cache by ``config.use_cache``), then
    ``model(input_ids, past)`` (GPT-2's second positional parameter is the cache)."""
    model = _model("namex-full-mom", "gpt2").eval()
    seq = torch.randint(1, VOCAB, (2, 9))
    out = model(seq[:, :5])  # with gradients: an ordinary pass, no decoding state is kept
    with pytest.raises(ValueError, match="run the prompt with use_cache=True"):
        model(seq[:, 5:6], out.past_key_values)
    with torch.no_grad():
        out = model(seq[:, :5])
        steps, past = [out.logits], out.past_key_values
        for t in range(5, 9):
            out = model(seq[:, t : t + 1], past, use_cache=True)
            steps.append(out.logits)
            past = out.past_key_values
        reference = model(seq).logits
    torch.testing.assert_close(torch.cat(steps, dim=1), reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_beam_search_reorders_the_decoding_caches(arch):
    model = _model("namex-full-mom", arch).eval()
    prompt = torch.randint(1, VOCAB, (2, 5))
    with torch.no_grad():
        beams = dict(max_new_tokens=8, num_beams=3, do_sample=False)
        cached = model.generate(prompt, use_cache=True, **beams)
        full = model.generate(prompt, use_cache=False, **beams)
    assert torch.equal(cached, full)
    chain = next(m for m in model.modules() if isinstance(m, MoEFeedForward))._chain
    assert "_reorder_cache" in model.__dict__
    chain.unlink()
    assert "_reorder_cache" not in model.__dict__
