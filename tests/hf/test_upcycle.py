"""nashmoe.hf.upcycle: BERT encoders (sequence routing), Llama and GPT-2 decoders (segments)."""

from __future__ import annotations

import warnings

import pytest
import torch

from .tiny import dense_model, family_model, tokens

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("nashmoe.hf")

METHODS = [
    "smoe",
    "smear",
    "camex",
    "ep-camex",
    "namex",
    "namex-full",
    "namex-mom",
    "namex-full-mom",
]


def _inputs(arch: str):
    x = tokens(2, 11)
    if arch != "bert":
        return {"input_ids": x}
    mask = torch.ones_like(x)
    mask[0, 7:] = 0
    return {"input_ids": x, "attention_mask": mask}


def _options(arch: str, method: str) -> dict:
    return {} if method == "smoe" or arch == "bert" else {"segment_len": 4}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_noise_zero_computes_the_dense_function_for_every_method(arch: str) -> None:
    inputs = _inputs(arch)
    ref_model = dense_model(arch)
    with torch.no_grad():
        ref = ref_model(**inputs).logits
    for method in METHODS:
        model = hf.upcycle(dense_model(arch), 4, method, noise=0.0, **_options(arch, method))
        assert len(hf.moe_layers(model)) == 2
        with torch.no_grad():
            out = model(**inputs).logits
        err = float((out - ref).abs().max() / ref.abs().max())
        assert err < 1e-5, (method, err)
        if method.startswith("namex"):  # every solve saw τ = 0: degenerate, zero step
            aux = hf.moe_layers(model)[0].last_aux
            assert int(aux.fallbacks) == 1


@pytest.mark.parametrize(("arch", "method"), [("llama", "namex"), ("gpt2", "ep-camex")])
def test_default_noise_differs_slightly_and_trains(arch: str, method: str) -> None:
    x = tokens(4, 12)
    dense = dense_model(arch)
    with torch.no_grad():
        ref = dense(input_ids=x).logits
    model = hf.upcycle(dense_model(arch), 4, method, segment_len=4)
    with torch.no_grad():
        out = model(input_ids=x).logits
    err = float((out - ref).abs().max() / ref.abs().max())
    assert 0 < err < 1e-2
    model.train()
    model.config.output_router_logits = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        out = model(input_ids=x, labels=x)
        assert out.aux_loss is not None
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("method", ["smear", "namex"])
def test_bert_sequence_routing_ignores_padding(method: str) -> None:
    """The attention mask reaches the MoE layers: padding does not change a sequence's routing."""
    model = hf.upcycle(dense_model("bert"), 4, method, noise=0.5)
    assert hf.moe_layers(model)[0].config.unit == "sequence"
    with torch.no_grad():  # routing that depends on the input
        for layer in hf.moe_layers(model):
            layer.router.normal_(0.0, 2.0)
    x = tokens(1, 7)
    padded = torch.cat([x, torch.full((1, 4), 3)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 4)], dim=1).long()

    def hidden(**kw):
        with torch.no_grad():
            return model(**kw, output_hidden_states=True).hidden_states[-1][:, :7]

    short = hidden(input_ids=x)
    assert (hidden(input_ids=padded, attention_mask=mask) - short).abs().max() < 1e-6
    # the same call with the mask kept from the MoE layers (attention still masked) differs
    model._nashmoe_mask_handle.remove()
    model._nashmoe_mask.mask = None
    assert (hidden(input_ids=padded, attention_mask=mask) - short).abs().max() > 1e-5


def test_bert_smoe_router_losses_ignore_padding() -> None:
    """The attention mask reaches smoe too: padding tokens stay out of its balance and z-losses
    (the real tokens' outputs never depended on the padding)."""
    model = hf.upcycle(dense_model("bert"), 4, "smoe", noise=0.5)
    x = tokens(1, 7)
    padded = torch.cat([x, torch.full((1, 5), 3)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()

    def losses(**kw):
        with torch.no_grad():
            model(**kw)
        return [
            float(v)
            for m in hf.moe_layers(model)
            for v in (m.last_aux.balance_loss, m.last_aux.z_loss)
        ]

    short = losses(input_ids=x)
    assert losses(input_ids=padded, attention_mask=mask) == pytest.approx(short, rel=1e-5)
    model._nashmoe_mask_handle.remove()  # the mask kept from the MoE layers: padding counts
    model._nashmoe_mask.mask = None
    assert losses(input_ids=padded, attention_mask=mask) != pytest.approx(short, rel=1e-5)


def test_bert_save_and_auto_reload(tmp_path) -> None:
    model = hf.upcycle(dense_model("bert"), 4, "namex-mom", noise=0.05, gamma=0.5)
    inputs = _inputs("bert")
    with torch.no_grad():
        ref = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.nashmoe["options"]["num_experts"] == 4
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, ref)


def test_gpt2_upcycled_generate_with_cache_equals_without(tmp_path) -> None:
    model = hf.upcycle(dense_model("gpt2"), 4, "namex", noise=0.1, segment_len=3)
    x = tokens(2, 4)
    kw = dict(max_new_tokens=7, do_sample=False, pad_token_id=0)
    assert torch.equal(
        model.generate(x, use_cache=True, **kw), model.generate(x, use_cache=False, **kw)
    )
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_upcycle_errors() -> None:
    with pytest.raises(ValueError, match=r"already sparse: use nashmoe\.hf\.convert"):
        hf.upcycle(family_model("olmoe"), 4, "namex")
    model = dense_model("llama")
    with pytest.raises(ValueError, match="num_experts"):
        hf.upcycle(model, 0, "namex")
    with pytest.raises(ValueError, match="eta is only used by the CAMEx family"):
        hf.upcycle(model, 4, "smear", eta=1.0)
    with pytest.raises(ValueError, match="fixed by the model"):
        hf.upcycle(model, 4, "smear", d_ff=8)
    hf.upcycle(model, 2, "smoe")
    with pytest.raises(ValueError, match="already converted"):
        hf.upcycle(model, 2, "smoe")


@pytest.mark.parametrize("reentrant", [False, True])
def test_anchored_layers_under_gradient_checkpointing(reentrant: bool) -> None:
    model = hf.upcycle(dense_model("llama"), 4, "namex-full-mom", noise=0.1, segment_len=4)
    layers = hf.moe_layers(model)
    assert isinstance(layers[1], hf.AnchoredMoEFeedForward) and not layers[1].owns_base
    model.train()
    x = tokens(2, 10)

    def grads():
        model.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert "model.layers.1.mlp.moe.anchor_w_in" in plain
    with warnings.catch_warnings():  # transformers 5.24: renamed activation_checkpointing_enable
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": reentrant}
        )
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name, g in plain.items():
        assert torch.allclose(checkpointed[name], g, rtol=1e-5, atol=1e-7), name


def test_bert_encoder_upcycled_then_loaded_with_a_classification_head(tmp_path) -> None:
    """The SST-2 path: an upcycled ``BertModel`` (as all-MiniLM-L6-v2) reloaded by
    ``AutoModelForSequenceClassification`` keeps its MoE weights and trains with padding."""
    encoder = transformers.BertModel(dense_model("bert").config)
    hf.upcycle(encoder, 4, "namex", noise=0.05)
    encoder.save_pretrained(tmp_path)
    clf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert type(clf).__name__ == "NashMoEBertForSequenceClassification"
    ours = dict(clf.bert.named_parameters())
    for name, p in encoder.named_parameters():
        assert torch.equal(ours[name], p), name
    inputs = _inputs("bert")
    for method in METHODS:  # one training step per method, padded batch
        model = hf.upcycle(dense_model("bert"), 4, method, noise=0.05)
        model.train()
        model.config.output_router_logits = True
        out = model(**inputs, labels=torch.tensor([0, 1]))
        out.loss.backward()
        assert torch.isfinite(out.loss) and out.aux_loss is not None
        layer = hf.moe_layers(model)[1]
        assert layer.router.grad is not None and layer.router.grad.abs().sum() > 0, method
