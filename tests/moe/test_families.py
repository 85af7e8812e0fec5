"""Real MoE families: our smoe layer against the transformers 5 sparse blocks, same weights.

Tiny blocks are built offline from their config classes, their weights copied with
``nashmoe.moe.families.load_hf_block``; outputs (train mode without noise, and eval), input
gradients and router logits must agree in float32 to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="5.0")

from nashmoe.moe import MoEConfig, MoEFeedForward  # noqa: E402
from nashmoe.moe.families import FAMILIES, family_config, from_hf_block  # noqa: E402

H = 16


def _hf(family):
    if family == "mixtral":
        from transformers.models.mixtral import modeling_mixtral as m

        cfg = transformers.MixtralConfig(
            hidden_size=H, intermediate_size=12, num_local_experts=4, num_experts_per_tok=2
        )
        return cfg, m.MixtralSparseMoeBlock(cfg)
    if family == "qwen2_moe":
        from transformers.models.qwen2_moe import modeling_qwen2_moe as m

        cfg = transformers.Qwen2MoeConfig(
            hidden_size=H,
            moe_intermediate_size=12,
            shared_expert_intermediate_size=20,
            num_experts=6,
            num_experts_per_tok=2,
            norm_topk_prob=False,
        )
        return cfg, m.Qwen2MoeSparseMoeBlock(cfg)
    if family == "qwen3_moe":
        from transformers.models.qwen3_moe import modeling_qwen3_moe as m

        cfg = transformers.Qwen3MoeConfig(
            hidden_size=H,
            moe_intermediate_size=12,
            num_experts=6,
            num_experts_per_tok=3,
            norm_topk_prob=True,
        )
        return cfg, m.Qwen3MoeSparseMoeBlock(cfg)
    if family == "olmoe":
        from transformers.models.olmoe import modeling_olmoe as m

        cfg = transformers.OlmoeConfig(
            hidden_size=H, intermediate_size=12, num_experts=8, num_experts_per_tok=2
        )
        return cfg, m.OlmoeSparseMoeBlock(cfg)
    if family == "deepseek_v3":
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m

        cfg = transformers.DeepseekV3Config(
            hidden_size=H,
            moe_intermediate_size=10,
            n_routed_experts=8,
            num_experts_per_tok=3,
            n_group=4,
            topk_group=2,
            n_shared_experts=2,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
        )
        return cfg, m.DeepseekV3MoE(cfg)
    raise AssertionError(family)


def _randomise(block, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        for name, b in block.named_buffers():
            if "bias" in name:  # DeepSeek's e_score_correction_bias: a non-trivial selection
                b.copy_(0.1 * torch.randn(b.shape, generator=g))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_matches_the_transformers_block(family, mode):
    hf_config, block = _hf(family)
    _randomise(block, seed=1)
    layer = from_hf_block(block, family, hf_config)
    assert layer.config.router_noise == 0
    block.train(mode == "train")
    layer.train(mode == "train")
    x = torch.randn(3, 7, H, generator=torch.Generator().manual_seed(2))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    expected = block(x1)
    out = layer(x2)
    assert (out - expected).abs().max() <= 1e-5, float((out - expected).abs().max())
    weight = torch.randn_like(out)
    (expected * weight).sum().backward()
    (out * weight).sum().backward()
    assert (x1.grad - x2.grad).abs().max() <= 1e-5
    logits = block.gate(x.reshape(-1, H))[0]
    torch.testing.assert_close(layer._logits(x.reshape(-1, H)), logits, atol=1e-6, rtol=1e-6)


def test_family_configs_carry_the_routing_of_each_family():
    cfg = family_config("qwen2_moe", _hf("qwen2_moe")[0])
    assert (cfg.norm_topk, cfg.shared_experts, cfg.shared_gate) == (False, 1, True)
    assert cfg.balance_loss_scale == "transformers"
    ds = family_config("deepseek_v3", _hf("deepseek_v3")[0])
    assert (ds.score_func, ds.n_group, ds.topk_group, ds.bias_balancing) == ("sigmoid", 4, 2, True)
    assert (ds.routed_scaling, ds.shared_experts, ds.shared_d_ff) == (2.5, 2, 10)
    assert ds.balance_coef == 0.0  # HF's DeepSeek-V3 adds no aux loss
    assert family_config("olmoe", _hf("olmoe")[0]).balance_coef == 0.01
    with pytest.raises(ValueError, match="unknown family"):
        family_config("gpt2", cfg)


def test_orientation_is_checked_not_guessed():
    hf_config, block = _hf("mixtral")
    layer = MoEFeedForward(family_config("mixtral", hf_config, num_experts=5))
    with pytest.raises(ValueError, match="expected shape"):
        from nashmoe.moe.families import load_hf_block

        load_hf_block(layer, block, "mixtral")
    with pytest.raises(ValueError, match="expected a"):
        load_hf_block(MoEFeedForward(family_config("mixtral", hf_config)), block, "olmoe")


def test_transformers_balance_loss_is_k_times_ours():
    """HF's load_balancing_loss_func divides the top-k counts by the tokens (Σ f = k); ours by
    the assignments (Σ f = 1). balance_loss_scale='transformers' reproduces HF's value."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(0)
    for k in (1, 2, 3):
        fields = dict(method="smoe", d_model=H, d_ff=8, num_experts=6, top_k=k)
        ours = MoEFeedForward(MoEConfig(**fields))
        hf = MoEFeedForward(MoEConfig(**fields, balance_loss_scale="transformers"))
        hf.load_state_dict(ours.state_dict())
        with torch.no_grad():
            ours.router.normal_(0, 1.0)
            hf.router.copy_(ours.router)
        x = torch.randn(2, 9, H)
        _, aux = ours(x, return_aux=True)
        _, aux_hf = hf(x, return_aux=True)
        logits = ours._logits(x.reshape(-1, H))
        expected = load_balancing_loss_func((logits,), 6, top_k=k)
        torch.testing.assert_close(aux_hf.balance_loss, expected)
        torch.testing.assert_close(aux.balance_loss * k, expected)
