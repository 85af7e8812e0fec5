"""TrainConfig resolution and validation; typed model overrides (``--set key=value``)."""

from __future__ import annotations

import pytest

from nashmoe.train import TrainConfig, build_model_config, parse_model_overrides


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


def test_segment_length_need_not_divide_for_token_routed_methods():
    TrainConfig(method="smoe", model={"segment_len": 48})
    TrainConfig(method="dense", model={"segment_len": 48})


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
