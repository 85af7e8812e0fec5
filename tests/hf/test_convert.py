"""nashmoe.hf.convert on tiny random transformers 5 models of every supported family."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from .tiny import family_model, tokens

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("nashmoe.hf")

FAMILIES = [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v3",
    "qwen3_5_moe_text",
    "deepseek_v2",
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_smoe_preserves_the_function(family: str) -> None:
    model = family_model(family)
    x = tokens()
    with torch.no_grad():
        ref = model(x).logits
    blocks = {
        n for n, m in model.named_modules() if type(m).__name__.endswith(("MoE", "Moe", "MoeBlock"))
    }
    assert blocks
    out_model = hf.convert(model, "smoe")
    assert out_model is model
    assert isinstance(model, transformers.PreTrainedModel)
    assert isinstance(model, getattr(transformers, type(model).__mro__[2].__name__))
    with torch.no_grad():
        out = model(x).logits
    assert _rel(out, ref) < 1e-5
    layers = hf.moe_layers(model)
    assert len(layers) == len(blocks)
    if family.startswith("deepseek"):  # first_k_dense_replace=1: layer 0 stays dense
        assert type(model.model.layers[0].mlp).__name__.endswith("MLP")
        assert layers[0].config.shared_experts == 1
    if family == "qwen2_moe":
        assert layers[0].config.shared_gate


def test_smear_with_a_one_hot_router_runs_that_expert() -> None:
    """Reads the fused HF tensors by hand (gate rows first, then up) as the reference."""
    model = family_model("mixtral")
    hf_blocks = [layer.mlp for layer in model.model.layers]
    experts = [
        (b.experts.gate_up_proj.detach().clone(), b.experts.down_proj.detach().clone())
        for b in hf_blocks
    ]
    hf.convert(model, "smear", unit="token", router_bias=True)
    j = 2
    inputs, outputs = [], []
    for layer in hf.moe_layers(model):
        with torch.no_grad():
            layer.router.zero_()
            layer.router_bias.fill_(-1e4)
            layer.router_bias[j] = 0.0
        layer.register_forward_hook(lambda m, a, o: inputs.append(a[0]) or outputs.append(o))
    with torch.no_grad():
        model(tokens())
    f = experts[0][1].shape[-1]
    for x, y, (gate_up, down) in zip(inputs, outputs, experts, strict=True):
        h = x @ gate_up[j].T
        expected = (torch.nn.functional.silu(h[..., :f]) * h[..., f:]) @ down[j].T
        assert _rel(y, expected) < 1e-5


@pytest.mark.parametrize(
    ("family", "method", "options"),
    [
        ("mixtral", "namex", {"segment_len": 4}),
        ("deepseek_v3", "namex-mom", {"segment_len": 4}),
        ("qwen2_moe", "camex", {"base": "shared", "segment_len": 3, "eta": 1.5}),
        ("qwen3_5_moe_text", "namex-full", {"base": "shared", "segment_len": 4}),
        ("olmoe", "ep-camex", {"anchored": True, "segment_len": 4}),
        ("deepseek_v2", "camex", {"segment_len": 3}),
    ],
)
def test_save_pretrained_and_auto_from_pretrained(tmp_path, family, method, options) -> None:
    model = hf.convert(family_model(family), method, **options)
    x = tokens()
    with torch.no_grad():
        ref = model(x).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "nashmoe_" + family
    assert saved["nashmoe"]["method"] == method
    default = "shared" if family in ("deepseek_v3", "deepseek_v2") else "mean"  # widths fit
    assert saved["nashmoe"]["options"] == {"base": default, **options}
    assert saved["nashmoe"]["moe_config"]["method"] == method
    if options.get("anchored"):
        assert isinstance(hf.moe_layers(model)[1], hf.AnchoredMoEFeedForward)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, ref)
    with pytest.raises(ValueError, match="already converted"):
        hf.convert(loaded, "smoe")


@pytest.mark.parametrize(
    ("family", "method"),
    [
        ("mixtral", "namex"),
        ("qwen2_moe", "smear"),
        ("deepseek_v3", "smoe"),
        ("qwen3_5_moe_text", "namex"),
    ],
)
def test_generate_with_cache_equals_without(family: str, method: str) -> None:
    options = {} if method == "smoe" else {"segment_len": 3}
    model = hf.convert(family_model(family), method, **options)
    x = tokens(2, 5)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    cached = model.generate(x, use_cache=True, **kw)
    full = model.generate(x, use_cache=False, **kw)
    assert cached.shape == (2, 13)
    assert torch.equal(cached, full)


def _grads(model, x) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(input_ids=x, labels=x).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("family", "method"), [("mixtral", "namex-full-mom"), ("olmoe", "ep-camex")]
)
def test_gradient_checkpointing_gives_the_same_gradients(family: str, method: str) -> None:
    model = hf.convert(family_model(family), method, segment_len=3)
    model.config.output_router_logits = True  # the balance loss too
    model.train()
    x = tokens(2, 10)
    plain = _grads(model, x)
    with warnings.catch_warnings():  # transformers 5.24: renamed activation_checkpointing_enable
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable()  # transformers' default: non-reentrant
    checkpointed = _grads(model, x)
    assert plain.keys() == checkpointed.keys()
    assert any(".moe.base_" in n for n in plain)
    for name, g in plain.items():
        assert torch.allclose(checkpointed[name], g, rtol=1e-5, atol=1e-7), name


def test_balance_loss_is_surfaced_as_the_family_aux_loss() -> None:
    # one sparse layer: transformers' pooled loss equals the per-layer loss
    model = family_model("mixtral", num_hidden_layers=1)
    x = tokens(2, 9)
    with torch.no_grad():
        ref = model(input_ids=x, labels=x, output_router_logits=True)
    hf.convert(model, "smoe")
    with torch.no_grad():
        plain = model(input_ids=x, labels=x)
        out = model(input_ids=x, labels=x, output_router_logits=True)
    assert plain.aux_loss is None
    assert torch.allclose(out.aux_loss, ref.aux_loss, rtol=1e-5)
    assert torch.allclose(out.loss, ref.loss, rtol=1e-5)
    coef = model.config.router_aux_loss_coef
    assert torch.allclose(out.loss, plain.loss + coef * out.aux_loss, rtol=1e-6)


def test_trainer_trains_a_converted_model(tmp_path) -> None:
    pytest.importorskip("accelerate")
    model = hf.convert(family_model("mixtral"), "namex", segment_len=4, base=1)
    model.config.output_router_logits = True
    x = tokens(8, 12)

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i):
            return {"input_ids": x[i], "labels": x[i]}

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data())
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any("aux" not in str(h) for h in trainer.state.log_history)
    for name in ("model.layers.0.mlp.moe.router", "model.layers.0.mlp.moe.base_w_in"):
        assert not torch.equal(dict(model.named_parameters())[name], before[name])


def test_errors_name_the_problem() -> None:
    model = family_model("mixtral")
    with pytest.raises(ValueError, match="gamma is only used by propagating"):
        hf.convert(model, "camex", gamma=0.5)
    with pytest.raises(ValueError, match="top_k is only used by method 'smoe'"):
        hf.convert(model, "namex", top_k=2)
    with pytest.raises(ValueError, match="base is only used by the CAMEx family"):
        hf.convert(model, "smoe", base="mean")
    with pytest.raises(ValueError, match="unknown MoE option 'gama'"):
        hf.convert(model, "namex", gama=0.5)
    with pytest.raises(ValueError, match="no shared expert"):
        hf.convert(model, "camex", base="shared")
    with pytest.raises(ValueError, match="unknown method"):
        hf.convert(model, "moe")
    assert not hf.moe_layers(model)  # nothing was changed by the failed calls
    hf.convert(model, "smoe")
    with pytest.raises(ValueError, match="already converted"):
        hf.convert(model, "smear")
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    with pytest.raises(ValueError, match=r"unsupported architecture 'llama'.*mixtral.*upcycle"):
        hf.convert(llama, "namex")
    with pytest.raises(ValueError, match="PreTrainedModel"):
        hf.convert(torch.nn.Linear(2, 2), "smoe")


def test_qwen2_moe_dense_layers_stay_dense() -> None:
    model = family_model("qwen2_moe", mlp_only_layers=[0])
    x = tokens()
    with torch.no_grad():
        ref = model(x).logits
    hf.convert(model, "namex", segment_len=4)
    assert type(model.model.layers[0].mlp).__name__ == "Qwen2MoeMLP"
    assert len(hf.moe_layers(model)) == 1
    smoe = hf.convert(family_model("qwen2_moe", mlp_only_layers=[0]), "smoe")
    with torch.no_grad():
        assert _rel(smoe(x).logits, ref) < 1e-5
