"""TrainConfig resolution and validation; typed model overrides (``--set key=value``)."""

from __future__ import annotations

import pytest

from nashmoe.train import TrainConfig, build_model_config, parse_model_overrides
from nashmoe.train.compare import check_options_used
from nashmoe.train.config import options_for_method


def test_defaults_are_resolved():
    cfg = TrainConfig(steps=200, lr=1e-3, method="smoe", seed=3)
    assert cfg.warmup == 10  # 5% of the steps
    assert cfg.min_lr == pytest.approx(1e-4)
    assert cfg.name == "shakespeare-tiny-smoe-s3"
    assert cfg.out_dir.endswith("runs/shakespeare-tiny-smoe-s3")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_model_config_takes_preset_method_and_overrides():
    cfg = TrainConfig(method="namex", model={"n_layer": 2, "moe_options": {"gamma": 0.5}})
    m = build_model_config(cfg, vocab_size=50)
    assert (m.vocab_size, m.n_layer, m.method, m.d_model) == (50, 2, "namex", 64)
    assert m.moe_config(0).gamma == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "moe"}, "unknown method 'moe'"),
        ({"corpus": "wikitext"}, "unknown corpus"),
        ({"preset": "huge"}, "unknown preset"),
        ({"tokenizer": "sentencepiece"}, "unknown tokenizer"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"batch_size": 6, "grad_accum": 4}, "not divisible by grad_accum"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"min_lr": 1.0, "lr": 0.1}, "min_lr must be in"),
        ({"beta2": 1.0}, "beta2 must be in"),
        ({"log_interval": 4, "ckpt_interval": 6}, "multiple of log_interval"),
        ({"dtype": "float16"}, "unknown dtype"),
        ({"distributed": "horovod"}, "unknown distributed strategy"),
        ({"model": {"n_layers": 2}}, "unknown model field(s) n_layers"),
        # GPTConfig's own check, surfaced when the config is created (before any data is read)
        ({"model": {"segment_len": 48}}, "segment_len=48 must divide block_size=128"),
        ({"model": {"moe_options": {"gama": 1.0}}}, "unknown MoE option"),
    ],
)
def test_bad_settings_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(
    ("method", "model", "message"),
    [
        ("smoe", {"moe_options": {"gamma": 0.5}}, "method 'smoe' does not use gamma"),
        ("smoe", {"segment_len": 48}, "method 'smoe' does not use segment_len"),
        ("dense", {"num_experts": 8}, "method 'dense' does not use num_experts"),
        ("dense", {"moe_options": {"eta": 1.0}}, "dense has no MoE layer"),
        ("camex", {"moe_options": {"gamma": 0.5}}, "method 'camex' does not use gamma"),
        ("namex", {"top_k": 1}, "method 'namex' does not use top_k"),
        ("ep-camex", {"moe_options": {"nash_max_iter": 3}}, "does not use nash_max_iter"),
    ],
)
def test_options_the_method_does_not_use_are_errors(method, model, message):
    # never accepted, recorded and ignored (MoEConfig raises for the same thing)
    with pytest.raises(ValueError, match=message):
        TrainConfig(method=method, model=model)


def test_options_the_method_uses_are_applied():
    cfg = TrainConfig(method="namex", model={"moe_options": {"gamma": 0.5}, "segment_len": 16})
    assert build_model_config(cfg, vocab_size=5).moe_config(0).gamma == 0.5
    assert TrainConfig(method="smoe", model={"top_k": 1}).model == {"top_k": 1}


def test_compare_applies_an_option_to_the_methods_that_use_it():
    model = {"moe_options": {"gamma": 0.5}, "top_k": 1}
    assert options_for_method(model, "namex") == {"moe_options": {"gamma": 0.5}}
    assert options_for_method(model, "smoe") == {"top_k": 1}
    assert options_for_method(model, "dense") == {}
    assert check_options_used(model, ["smoe", "namex"]) == {"top_k": ["smoe"], "gamma": ["namex"]}
    with pytest.raises(ValueError, match=r"no method of this comparison .* uses gamma"):
        check_options_used(model, ["smoe", "dense"])


def test_old_configs_with_ignored_options_stay_readable():
    old = TrainConfig(method="smoe").to_dict()
    old["model"] = {"segment_len": 48, "moe_options": {"gamma": 0.5}}  # ignored by smoe before
    assert TrainConfig.from_dict(old).model == {}


def test_overrides_are_typed_like_their_fields():
    got = parse_model_overrides(
        [
            "n_layer=2",
            "dropout=0.1",
            "tie_embeddings=false",
            "first_segment=self",
            "gamma=1",
            "nash_every=2",
            "merge_mask=ties",
            "learn_eta=True",
        ]
    )
    assert got["n_layer"] == 2 and isinstance(got["n_layer"], int)
    assert got["dropout"] == 0.1
    assert got["tie_embeddings"] is False
    assert got["first_segment"] == "self"
    moe = got["moe_options"]
    assert moe["gamma"] == 1.0 and isinstance(moe["gamma"], float)
    assert moe["nash_every"] == 2
    assert moe["merge_mask"] == "ties"
    assert moe["learn_eta"] is True


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("n_layer", "not of the form key=value"),
        ("n_layer=2.5", "wrong type float: expected int"),
        ("n_layer=True", "wrong type"),
        ("n_layer=true", "cannot parse n_layer"),
        ("dropout=abc", "cannot parse dropout"),
        ("foo=1", "unknown model option 'foo'"),
        ("moe_options={}", "unknown model option 'moe_options'"),
    ],
)
def test_bad_overrides(pair, message):
    with pytest.raises(ValueError, match=message):
        parse_model_overrides([pair])
