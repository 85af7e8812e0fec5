"""Tiny random transformers models, built offline from the config classes."""

from __future__ import annotations

import torch

transformers = __import__("pytest").importorskip("transformers")

COMMON = dict(
    vocab_size=48,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
    attention_dropout=0.0,
    tie_word_embeddings=False,
)


def family_model(family: str, seed: int = 0, **extra):
    """A tiny ``XxxForCausalLM`` of ``family`` (float32, eval mode, random weights)."""
    tf = transformers
    if family == "mixtral":
        cfg = tf.MixtralConfig(
            **COMMON, intermediate_size=24, num_local_experts=4, num_experts_per_tok=2
        )
        cls = tf.MixtralForCausalLM
    elif family == "qwen2_moe":
        cfg = tf.Qwen2MoeConfig(
            **COMMON,
            intermediate_size=24,
            moe_intermediate_size=12,
            shared_expert_intermediate_size=12,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            decoder_sparse_step=1,
        )
        cls = tf.Qwen2MoeForCausalLM
    elif family == "qwen3_moe":
        cfg = tf.Qwen3MoeConfig(
            **COMMON,
            head_dim=8,
            intermediate_size=24,
            moe_intermediate_size=12,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
        )
        cls = tf.Qwen3MoeForCausalLM
    elif family == "olmoe":
        cfg = tf.OlmoeConfig(**COMMON, intermediate_size=12, num_experts=4, num_experts_per_tok=2)
        cls = tf.OlmoeForCausalLM
    elif family == "deepseek_v3":
        c = dict(COMMON, num_hidden_layers=3, num_key_value_heads=2)
        cfg = tf.DeepseekV3Config(
            **c,
            intermediate_size=24,
            moe_intermediate_size=12,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            n_shared_experts=1,
            routed_scaling_factor=2.5,
            first_k_dense_replace=1,
            kv_lora_rank=8,
            q_lora_rank=None,
            qk_rope_head_dim=4,
            qk_nope_head_dim=4,
            v_head_dim=8,
        )
        cls = tf.DeepseekV3ForCausalLM
    elif family == "deepseek_v2":
        c = dict(COMMON, num_hidden_layers=3, num_key_value_heads=2)
        cfg = tf.DeepseekV2Config(
            **c,
            intermediate_size=24,
            moe_intermediate_size=12,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            routed_scaling_factor=2.0,
            first_k_dense_replace=1,
            kv_lora_rank=8,
            q_lora_rank=None,
            qk_rope_head_dim=4,
            qk_nope_head_dim=4,
            v_head_dim=8,
        )
        cls = tf.DeepseekV2ForCausalLM
    elif family == "qwen3_5_moe_text":  # hybrid: one linear-attention layer, one full
        cfg = tf.Qwen3_5MoeTextConfig(
            **COMMON,
            head_dim=8,
            moe_intermediate_size=12,
            shared_expert_intermediate_size=12,
            num_experts=4,
            num_experts_per_tok=2,
            linear_num_value_heads=2,
            linear_num_key_heads=2,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            layer_types=["linear_attention", "full_attention"],
        )
        cls = tf.Qwen3_5MoeForCausalLM
    else:
        raise ValueError(family)
    for k, v in extra.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # larger router weights: routing decisions that matter
        for name, p in model.named_parameters():
            if name.endswith("gate.weight"):
                p.normal_(0.0, 0.5)
            if name.endswith("e_score_correction_bias"):
                p.normal_(0.0, 0.1)
    return model


def dense_model(arch: str, seed: int = 0, **extra):
    """A tiny dense model: ``llama`` / ``gpt2`` (causal LM) or ``bert`` (sequence classifier)."""
    tf = transformers
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = tf.LlamaConfig(**COMMON, intermediate_size=24)
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=48,
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model = tf.GPT2LMHeadModel(cfg)
    elif arch == "bert":
        cfg = tf.BertConfig(
            vocab_size=48,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=24,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=2,
        )
        model = tf.BertForSequenceClassification(cfg)
    else:
        raise ValueError(arch)
    for k, v in extra.items():
        setattr(model.config, k, v)
    return model.eval()


def tokens(batch: int = 2, seq: int = 11, seed: int = 1, vocab: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)
