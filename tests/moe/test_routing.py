"""Routing options of real families, shared experts, merge_top_k, aux-loss-free balancing, the
balance-loss convention and the bf16 gradient accumulation of the fused merge."""

from __future__ import annotations

import pytest
import torch

from nashmoe.moe import MERGING_METHODS, MoEConfig, MoEFeedForward, update_router_biases
from nashmoe.moe.fused import merge_and_apply
from nashmoe.moe.layout import ExpertLayout

from .test_reference import D, compare, make_stack


def _perturb(layers, names=("router_bias", "shared_gate_weight")):
    with torch.no_grad():
        for layer in layers:
            for name in names:
                p = getattr(layer, name, None)
                if p is not None:
                    p.add_(0.3 * torch.randn_like(p))
    return layers


# ---------------------------------------------------------------- against the naive reference
@pytest.mark.parametrize(
    "overrides",
    [
        dict(score_func="sigmoid", norm_topk=False, routed_scaling=2.5),
        dict(score_func="sigmoid", n_group=2, topk_group=1, bias_balancing=True, top_k=2),
        dict(norm_topk=False, router_bias=True, shared_experts=2, shared_d_ff=3, shared_gate=True),
        dict(n_group=3, topk_group=2, top_k=3, glu=True, activation="silu", shared_experts=1),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_smoe_routing_options_match_reference(overrides):
    layers = _perturb(make_stack("smoe", num_experts=6, **overrides))
    for layer in layers:
        if hasattr(layer, "expert_bias"):
            layer.expert_bias.copy_(0.2 * torch.randn(6))
    compare(layers, torch.randn(2, 7, D, dtype=torch.float64))


@pytest.mark.parametrize("method", MERGING_METHODS)
def test_merge_top_k_matches_reference(method):
    """Outputs and gradients through 3 layers of propagation; only the k best experts merge."""
    layers = make_stack(method, num_experts=5, merge_top_k=2)
    g = compare(layers, torch.randn(2, 10, D, dtype=torch.float64))
    if layers[0].config.propagates:
        assert g["0.base_w_in"].abs().sum() > 0


@pytest.mark.parametrize(
    "method, overrides",
    [
        ("namex-full-mom", dict(merge_top_k=1, unit="token")),
        ("camex", dict(merge_top_k=3, unit="sequence", glu=True, bias=True)),
        ("ep-camex", dict(merge_top_k=2, merge_mask="ties", curvature_rank=1)),
        ("smear", dict(merge_top_k=2, unit="image", router_bias=True)),
        ("namex", dict(shared_experts=1, shared_d_ff=5, shared_gate=True, router_bias=True)),
        ("ep-camex", dict(merge_top_k=2, shared_experts=2, first_segment="self")),
    ],
    ids=lambda o: o if isinstance(o, str) else ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_merging_variants_match_reference(method, overrides):
    layers = _perturb(make_stack(method, num_experts=5, **overrides))
    compare(layers, torch.randn(2, 9, D, dtype=torch.float64))


def test_merge_top_k_equal_to_n_is_the_soft_merge():
    soft = make_stack("namex-full", num_experts=4)
    sparse = make_stack("namex-full", num_experts=4, merge_top_k=4)
    for a, b in zip(soft, sparse):
        b.load_state_dict(a.state_dict())
    x = torch.randn(2, 9, D, dtype=torch.float64)
    from .naive import module_stack

    torch.testing.assert_close(module_stack(sparse, x), module_stack(soft, x))


def test_merge_top_k_gradients_reach_only_selected_experts():
    torch.manual_seed(0)
    layer = MoEFeedForward(
        MoEConfig(method="smear", d_model=8, d_ff=16, num_experts=6, unit="sequence", merge_top_k=2)
    )
    x = torch.randn(1, 5, 8)
    _, aux = layer(x, return_aux=True)
    layer(x).sum().backward()
    used = aux.load > 0
    assert int(used.sum()) == 2
    per_expert = layer.w_in.grad.abs().sum(dim=(1, 2))
    assert bool((per_expert[used] > 0).all()) and bool((per_expert[~used] == 0).all())


@pytest.mark.parametrize("method", ["smear", "namex-full-mom"])
def test_segment_cache_decoding_with_merge_top_k_and_shared(method):
    torch.manual_seed(0)
    cfg = MoEConfig(
        method=method,
        d_model=8,
        d_ff=16,
        num_experts=4,
        segment_len=4,
        merge_top_k=2,
        shared_experts=1,
        shared_gate=True,
    )
    layers = torch.nn.ModuleList(MoEFeedForward(cfg, owns_base=(i == 0)) for i in range(2)).eval()
    from nashmoe.moe import SegmentCache

    from .naive import module_stack

    x = torch.randn(2, 11, 8)
    with torch.no_grad():
        full = module_stack(layers, x)
        caches = [SegmentCache() for _ in layers]

        def step(chunk, start):
            h, state = chunk, None
            for layer, cache in zip(layers, caches):
                y, aux = layer(h, state=state, return_aux=True, cache=cache, start_pos=start)
                state, h = aux.state, h + y
            return h

        outs = [step(x[:, :5], 0)] + [step(x[:, t : t + 1], t) for t in range(5, 11)]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- aux-loss-free balancing
def test_bias_balancing_reduces_imbalance_on_a_skewed_toy():
    torch.manual_seed(0)
    layer = MoEFeedForward(
        MoEConfig(
            method="smoe",
            d_model=8,
            d_ff=8,
            num_experts=4,
            top_k=1,
            score_func="sigmoid",
            bias_balancing=True,
            bias_update_rate=0.02,
        )
    )
    with torch.no_grad():
        layer.router.normal_(0, 0.3)
        layer.router[0] += 1.0  # skewed: expert 0 wins most tokens
    x = torch.randn(1, 512, 8) + 1.0

    def imbalance():
        _, aux = layer(x, return_aux=True)
        return float(aux.load.max() / aux.load.mean())

    before = imbalance()
    assert before > 2.0
    out_before = layer.eval()(x[:, :4]).detach()
    layer.train()
    layer.expert_load.zero_()
    for _ in range(100):
        layer(x)  # training forwards count the tokens per expert
        assert update_router_biases(torch.nn.ModuleList([layer])) == 1
    after = imbalance()
    assert after < 1.3 < before, (before, after)
    assert abs(float(layer.expert_bias.sum())) < 1e-5  # centred
    assert float(layer.expert_bias[0]) < 0  # the overloaded expert is pushed down
    # the bias changes the selection only: with the same choice the weights are unbiased scores
    assert layer.router.grad is None
    with torch.no_grad():
        layer.expert_bias.zero_()
    torch.testing.assert_close(layer.eval()(x[:, :4]), out_before)


def test_update_router_bias_without_counts_or_balancing():
    layer = MoEFeedForward(
        MoEConfig(method="smoe", d_model=4, d_ff=4, num_experts=4, bias_balancing=True)
    )
    assert torch.equal(layer.update_router_bias(), torch.zeros(4))  # nothing counted yet
    layer.eval()(torch.randn(1, 3, 4))
    assert float(layer.expert_load.sum()) == 0  # eval forwards do not count
    with pytest.raises(ValueError, match="bias_balancing"):
        MoEFeedForward(MoEConfig(method="smoe", d_model=4, d_ff=4)).update_router_bias()


# ---------------------------------------------------------------- balance-loss convention
@pytest.mark.parametrize("method, k", [("smoe", 3), ("camex", 2), ("smear", None)])
def test_transformers_balance_scale_is_k_times(method, k):
    torch.manual_seed(0)
    fields = dict(method=method, d_model=8, d_ff=8, num_experts=5)
    if method == "smoe":
        fields["top_k"] = k
    else:
        fields.update(segment_len=2, merge_top_k=k)
    ours = MoEFeedForward(MoEConfig(**fields))
    theirs = MoEFeedForward(MoEConfig(**fields, balance_loss_scale="transformers"))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 8)
    a, b = ours(x, return_aux=True)[1], theirs(x, return_aux=True)[1]
    torch.testing.assert_close(b.balance_loss, (k or 1) * a.balance_loss)
    torch.testing.assert_close(b.loss, 0.01 * b.balance_loss)


# ---------------------------------------------------------------- configuration errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="smoe", score_func="relu"), "score_func must be"),
        (dict(method="camex", score_func="sigmoid"), "score_func is only used by"),
        (dict(method="smoe", norm_topk=1), "norm_topk must be a bool"),
        (dict(method="smoe", routed_scaling=0.0), "routed_scaling must be positive"),
        (dict(method="smoe", n_group=2), "n_group and topk_group"),
        (dict(method="smoe", n_group=3, topk_group=1), "n_group must be a positive divisor"),
        (dict(method="smoe", n_group=2, topk_group=3), "topk_group must be"),
        (dict(method="smoe", n_group=4, topk_group=1, top_k=2), "top_k=2 exceeds"),
        (dict(method="smoe", bias_update_rate=0.1), "bias_update_rate is only used with"),
        (dict(method="smoe", bias_balancing=True, bias_update_rate=-1.0), "bias_update_rate"),
        (dict(method="smear", bias_balancing=True), "bias_balancing is only used by"),
        (dict(method="dense", router_bias=True), "router_bias is only used by"),
        (dict(method="dense", shared_experts=1), "shared_experts is only used by"),
        (dict(method="smoe", shared_experts=-1), "shared_experts must be"),
        (dict(method="smoe", shared_gate=True), "shared_d_ff and shared_gate need"),
        (dict(method="smoe", shared_experts=1, shared_d_ff=0), "shared_d_ff must be"),
        (dict(method="smoe", merge_top_k=2), "merge_top_k is only used by"),
        (dict(method="namex", merge_top_k=5), "merge_top_k must be"),
        (dict(method="smear", merge_top_k=0), "merge_top_k must be"),
        (dict(method="smoe", balance_loss_scale="hf"), "balance_loss_scale must be"),
    ],
)
def test_bad_routing_configurations_name_the_field(kwargs, message):
    fields = dict(d_model=8, d_ff=16, num_experts=4)
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MoEConfig(**fields)


# ---------------------------------------------------------------- bf16 gradient accumulation
@pytest.mark.parametrize("low_precision_products", [False, True], ids=["cpu", "accelerator"])
def test_bf16_chunked_gradients_accumulate_in_float32(monkeypatch, low_precision_products):
    """One unit per chunk under bf16: the expert gradients stay as close to the float64
    reference as unchunked. Before the fix (bf16 accumulators) this test measured 1.1 % relative
    error (the issue: 2.0 % chunked against 0.6 % unchunked); after, about 0.6-0.7 %, the same
    as unchunked. ``accelerator``: the path used off the CPU (bf16 products per chunk, float32
    accumulation), forced here on the CPU."""
    import nashmoe.moe.fused as fused

    monkeypatch.setattr(
        fused,
        "_low_precision_products",
        lambda x: low_precision_products and x.dtype != torch.float64,
    )
    torch.manual_seed(0)
    layout = ExpertLayout(32, 64, glu=True, bias=True)
    u, t, n = 48, 16, 4
    vec64 = {k: 0.2 * torch.randn(n, *s, dtype=torch.float64) for k, s in layout.shapes.items()}
    base64 = {k: 0.2 * torch.randn(*s, dtype=torch.float64) for k, s in layout.shapes.items()}
    coeff = torch.rand(u, n, dtype=torch.float64)
    x = torch.randn(u, t, 32, dtype=torch.float64)
    w = torch.randn(u, t, 32, dtype=torch.float64)

    def grads(dtype, chunk):
        vec = {k: v.to(dtype).clone().requires_grad_() for k, v in vec64.items()}
        base = {k: v.to(dtype).clone().requires_grad_() for k, v in base64.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.float32):
            out = merge_and_apply(
                x.to(dtype), coeff.to(dtype), base, vec, activation="silu", max_chunk_bytes=chunk
            )
        (out.double() * w).sum().backward()
        return [v.grad.double() for v in [*vec.values(), *base.values()]]

    ref = grads(torch.float64, None)
    chunked = grads(torch.float32, 1)
    whole = grads(torch.float32, None)
    for g, g_whole, r in zip(chunked, whole, ref):
        assert g.dtype == torch.float64
        err = float((g - r).norm() / r.norm())
        err_whole = float((g_whole - r).norm() / r.norm())
        assert err < 0.008, err
        assert err < 1.05 * err_whole + 1e-4, (err, err_whole)


@pytest.mark.parametrize("with_beta", [False, True])
@pytest.mark.parametrize("chunk_bytes", [1, None])
def test_sparse_merge_and_apply_matches_plain_autograd(with_beta, chunk_bytes):
    from nashmoe.moe.ffn import activation_fn, merged_ffn

    torch.manual_seed(0)
    layout = ExpertLayout(5, 6, glu=True, bias=True)
    u, t, n, k = 7, 3, 5, 2
    vectors = {
        name: torch.randn(n, *s, dtype=torch.float64, requires_grad=True)
        for name, s in layout.shapes.items()
    }
    base = {
        name: torch.randn(*s, dtype=torch.float64, requires_grad=True)
        for name, s in layout.shapes.items()
    }
    index = torch.stack([torch.randperm(n)[:k] for _ in range(u)])
    coeff = torch.rand(u, k, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(u, dtype=torch.float64, requires_grad=True) if with_beta else None
    x = torch.randn(u, t, 5, dtype=torch.float64, requires_grad=True)
    inputs = [x, coeff, *vectors.values(), *base.values(), *([beta] if with_beta else [])]

    def plain():
        w = {}
        for name, v in vectors.items():
            picked = v[index]  # [u, k, *shape]
            merged = (coeff.view(u, k, *[1] * (v.dim() - 1)) * picked).sum(1)
            b = base[name] if beta is None else beta.view(u, *[1] * (v.dim() - 1)) * base[name]
            w[name] = merged + b
        return merged_ffn(x, w, activation_fn("gelu"))

    fused = merge_and_apply(
        x,
        coeff,
        base,
        vectors,
        activation="gelu",
        max_chunk_bytes=chunk_bytes,
        index=index,
        base_coeff=beta,
    )
    ref = plain()
    torch.testing.assert_close(fused, ref)
    weight = torch.randn_like(ref)
    for a, b in zip(
        torch.autograd.grad((fused * weight).sum(), inputs),
        torch.autograd.grad((ref * weight).sum(), inputs),
    ):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["smear", "ep-camex", "namex-full-mom"])
def test_merge_top_k_and_shared_under_bf16_autocast(method):
    torch.manual_seed(0)
    cfg = MoEConfig(
        method=method,
        d_model=8,
        d_ff=16,
        num_experts=6,
        segment_len=4,
        merge_top_k=2,
        shared_experts=1,
        shared_gate=True,
        init_std=0.2,
    )
    layers = [MoEFeedForward(cfg, owns_base=(i == 0)) for i in range(2)]
    from .naive import module_stack

    x = torch.randn(2, 10, 8)
    ref = module_stack(layers, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module_stack(layers, x)
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)
    out.float().sum().backward()
    for layer in layers:
        for name, p in layer.named_parameters():
            if p.grad is not None:
                assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("method", ["ep-camex", "namex"])
def test_merge_top_k_last_in_chain_skips_the_step_only(method):
    layers = make_stack(method, num_experts=5, merge_top_k=2)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    from .naive import module_stack

    expected = module_stack(layers, x)
    layers[-1].last_in_chain = True
    out = module_stack(layers, x)
    torch.testing.assert_close(out, expected)
    _, aux = layers[-1](x, state=layers[-2].last_aux.state, return_aux=True)
    assert aux.state is None


def test_bias_balancing_counts_once_under_activation_checkpointing():
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    layer = MoEFeedForward(
        MoEConfig(method="smoe", d_model=8, d_ff=8, num_experts=4, bias_balancing=True)
    )
    x = torch.randn(1, 6, 8, requires_grad=True)
    checkpoint(layer, x, use_reentrant=False).sum().backward()
    assert float(layer.expert_load.sum()) == 6 * 2  # 6 tokens × top-2, not recounted
