"""Fast paths against plain autograd, the inference cache, the propagation chain, decoding."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from nashmoe.moe import MoEConfig, MoEFeedForward, MoEMLP, SegmentCache, link_moe_layers
from nashmoe.moe.ffn import activation_fn, merged_ffn, mixed_ffn, topk_ffn
from nashmoe.moe.fused import merge_and_apply
from nashmoe.moe.layout import ExpertLayout


# ---------------------------------------------------------------- kernels
@pytest.mark.parametrize("glu, bias", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("chunk_bytes", [1, 5000, None])
@pytest.mark.parametrize("keep_bytes", [0, 2**30], ids=["rebuild", "keep"])
def test_merge_and_apply_matches_plain_autograd(glu, bias, with_base, chunk_bytes, keep_bytes):
    """Both backward modes: merged weights kept from the forward (a 1 GiB budget) and rebuilt
    chunk by chunk (``keep_merged_bytes=0``)."""
    torch.manual_seed(0)
    layout = ExpertLayout(6, 10, glu=glu, bias=bias)
    u, t, n = 7, 5, 3
    vectors = {
        k: torch.randn(n, *s, dtype=torch.float64, requires_grad=True)
        for k, s in layout.shapes.items()
    }
    base = (
        {
            k: torch.randn(*s, dtype=torch.float64, requires_grad=True)
            for k, s in layout.shapes.items()
        }
        if with_base
        else None
    )
    coeff = torch.rand(u, n, dtype=torch.float64, requires_grad=True)
    x = torch.randn(u, t, 6, dtype=torch.float64, requires_grad=True)
    inputs = [x, coeff, *vectors.values(), *([] if base is None else base.values())]

    def plain():
        w = {}
        for k, v in vectors.items():
            merged = coeff @ v.reshape(n, -1)
            if base is not None:
                merged = merged + base[k].reshape(1, -1)
            w[k] = merged.view(u, *v.shape[1:])
        return merged_ffn(x, w, activation_fn("silu"))

    fused = merge_and_apply(
        x,
        coeff,
        base,
        vectors,
        activation="silu",
        max_chunk_bytes=chunk_bytes,
        keep_merged_bytes=keep_bytes,
    )
    ref = plain()
    torch.testing.assert_close(fused, ref)
    weight = torch.randn_like(ref)
    g_fused = torch.autograd.grad((fused * weight).sum(), inputs)
    g_ref = torch.autograd.grad((ref * weight).sum(), inputs)
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("keep_bytes", [0, 2**30], ids=["rebuild", "keep"])
def test_merge_and_apply_gradcheck(keep_bytes):
    torch.manual_seed(0)
    layout = ExpertLayout(3, 4, glu=True, bias=True)
    vectors = [
        torch.randn(2, *s, dtype=torch.float64, requires_grad=True) for s in layout.shapes.values()
    ]
    coeff = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, coeff, *vs):
        return merge_and_apply(
            x,
            coeff,
            None,
            dict(zip(layout.names, vs)),
            activation="gelu",
            max_chunk_bytes=100,
            keep_merged_bytes=keep_bytes,
        )

    assert torch.autograd.gradcheck(f, (x, coeff, *vectors))


def test_mixed_ffn_equals_materialised_per_token_merge():
    torch.manual_seed(0)
    layout = ExpertLayout(5, 7, glu=True, bias=True)
    vectors = {k: torch.randn(3, *s, dtype=torch.float64) for k, s in layout.shapes.items()}
    base = {k: torch.randn(*s, dtype=torch.float64) for k, s in layout.shapes.items()}
    x = torch.randn(11, 5, dtype=torch.float64)
    coeff = torch.rand(11, 3, dtype=torch.float64)
    act = activation_fn("gelu")
    w = {k: base[k] + torch.einsum("mn,n...->m...", coeff, v) for k, v in vectors.items()}
    expected = merged_ffn(x[:, None], w, act)[:, 0]
    torch.testing.assert_close(mixed_ffn(x, coeff, base, vectors, act), expected)


def test_topk_dispatch_matches_a_loop_over_tokens():
    torch.manual_seed(0)
    layout = ExpertLayout(4, 6, bias=True)
    experts = {k: torch.randn(5, *s, dtype=torch.float64) for k, s in layout.shapes.items()}
    x = torch.randn(17, 4, dtype=torch.float64)
    idx = torch.randint(0, 5, (17, 2))
    idx[:, 1] = (idx[:, 0] + 1 + torch.randint(0, 4, (17,))) % 5
    w = torch.rand(17, 2, dtype=torch.float64)
    act = activation_fn("relu")
    out = topk_ffn(x, experts, idx, w, act)
    for t in range(17):
        expected = sum(
            w[t, j]
            * merged_ffn(
                x[t][None, None], {k: v[idx[t, j]][None] for k, v in experts.items()}, act
            )[0, 0]
            for j in range(2)
        )
        torch.testing.assert_close(out[t], expected)


@pytest.mark.parametrize("method", ["smear", "camex", "namex-full-mom"])
def test_every_expert_receives_a_gradient(method):
    """Merging layers use every expert in every step (no unused parameters under DDP)."""
    layer = MoEFeedForward(
        MoEConfig(method=method, d_model=8, d_ff=16, num_experts=4, segment_len=4)
    )
    with torch.no_grad():
        layer.prior_logits.copy_(torch.tensor([50.0, 0, 0, 0]))  # ~one-hot prior
    layer(torch.randn(1, 4, 8)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name


# ---------------------------------------------------------------- inference cache
def _model(method="namex-full-mom", n_layers=3):
    torch.manual_seed(0)
    cfg = MoEConfig(method=method, d_model=8, d_ff=16, num_experts=4, segment_len=4)
    return nn.ModuleList(MoEFeedForward(cfg, owns_base=(i == 0)) for i in range(n_layers))


def _forward(layers, x):
    h, state = x, None
    for layer in layers:
        y, aux = layer(h, state=state, return_aux=True)
        state = aux.state
        h = h + y
    return h


def _fresh_output(layers, x):
    with torch.no_grad():
        for layer in layers:
            layer.clear_cache()
        out = _forward(layers, x)
        for layer in layers:
            layer.clear_cache()
    return out


def test_inference_cache_is_used_and_exact():
    layers = _model().eval()
    x = torch.randn(2, 8, 8)
    with torch.no_grad():
        first = _forward(layers, x)
        second = _forward(layers, x)
    assert all(layer._inference_cache.hits >= 1 for layer in layers)
    torch.testing.assert_close(first, second)
    layers.train()
    torch.testing.assert_close(_forward(layers, x).detach(), first)


@pytest.mark.parametrize(
    "update",
    ["optimizer_step", "inplace_no_grad", "load_state_dict", "upstream_layer", "replace_data_ptr"],
)
def test_a_stale_inference_cache_is_never_used(update):
    layers = _model().eval()
    x = torch.randn(2, 8, 8)
    with torch.no_grad():
        _forward(layers, x)  # fills the caches
    if update == "optimizer_step":
        layers.train()
        opt = torch.optim.SGD(layers.parameters(), lr=0.5)
        _forward(layers, x).square().sum().backward()
        opt.step()
        layers.eval()
    elif update == "inplace_no_grad":
        with torch.no_grad():
            layers[2].w_out.mul_(1.5)
    elif update == "load_state_dict":
        other = _model()
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.3)
        layers.load_state_dict(other.state_dict())
    elif update == "upstream_layer":  # only the first layer changes: every later cache is stale
        with torch.no_grad():
            layers[0].base_w_in.add_(0.5)
    elif update == "replace_data_ptr":
        layers[1].w_in = nn.Parameter(layers[1].w_in.detach() * 2)
    with torch.no_grad():
        cached = _forward(layers, x)
    torch.testing.assert_close(cached, _fresh_output(layers, x))


def test_optimizer_step_without_parameter_changes_still_invalidates():
    layers = _model().eval()
    with torch.no_grad():
        _forward(layers, torch.randn(1, 4, 8))
    misses = layers[0]._inference_cache.misses
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1).step()  # any optimizer, any model
    with torch.no_grad():
        _forward(layers, torch.randn(1, 4, 8))
    assert layers[0]._inference_cache.misses == misses + 1


def test_data_edits_need_clear_cache():
    """``.data`` bypasses version counting (documented): clear_cache() restores exactness."""
    layers = _model().eval()
    x = torch.randn(2, 8, 8)
    with torch.no_grad():
        _forward(layers, x)
    layers[0].base_w_out.data.mul_(3.0)
    for layer in layers:
        layer.clear_cache()
    with torch.no_grad():
        torch.testing.assert_close(_forward(layers, x), _fresh_output(layers, x))


def test_no_cache_in_training_or_with_grad():
    layers = _model()
    x = torch.randn(1, 8, 8)
    _forward(layers, x)
    layers.eval()
    _forward(layers, x)  # eval but grad enabled: no cache
    assert all(layer._inference_cache.hits == 0 for layer in layers)


# ---------------------------------------------------------------- propagation chain
class _OpaqueBlock(nn.Module):
    """A third-party block that calls its FFN with the hidden states only."""

    def __init__(self, ffn):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.mlp = ffn

    def forward(self, h):
        return h + self.mlp(self.norm(h))


class _OpaqueModel(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(_OpaqueBlock(ffn) for ffn in layers)

    def forward(self, h):
        for block in self.layers:
            h = block(h)
        return h


@pytest.mark.parametrize("method", ["ep-camex", "namex", "namex-full-mom"])
def test_chain_threads_the_state_through_an_opaque_model(method):
    layers = _model(method, 4)
    model = _OpaqueModel(layers)
    x = torch.randn(2, 8, 8)
    with pytest.raises(ValueError, match="received no state"):
        model(x)
    chain = link_moe_layers(model)
    out = model(x)
    # the same computation with the state threaded explicitly
    h, state = x, None
    for block in model.layers:
        y, aux = block.mlp(block.norm(h), state=state, return_aux=True)
        state = aux.state
        h = h + y
    chain.unlink()
    torch.testing.assert_close(out, h)
    with pytest.raises(ValueError, match="received no state"):
        model(x)


def test_chain_is_reset_between_forward_passes_and_gradients_flow():
    layers = _model("namex-full-mom", 3)
    model = _OpaqueModel(layers)
    link_moe_layers(model)
    x = torch.randn(2, 8, 8)
    a = model(x)
    b = model(x)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    b.sum().backward()
    assert layers[0].base_w_in.grad.abs().sum() > 0


def test_link_rejects_bad_chains():
    torch.manual_seed(0)
    cfg = MoEConfig(method="namex", d_model=8, d_ff=16, num_experts=4, segment_len=4)
    two_owners = _OpaqueModel([MoEFeedForward(cfg), MoEFeedForward(cfg)])
    with pytest.raises(ValueError, match="must own the base"):
        link_moe_layers(two_owners)
    with pytest.raises(ValueError, match="no MoEFeedForward"):
        link_moe_layers(nn.Linear(2, 2))
    model = _OpaqueModel(_model("namex", 2))
    link_moe_layers(model)
    with pytest.raises(ValueError, match="already linked"):
        link_moe_layers(model)


# ---------------------------------------------------------------- incremental decoding
@pytest.mark.parametrize("method", ["smear", "camex", "ep-camex", "namex-full-mom"])
def test_segment_cache_decoding_equals_full_forward(method):
    layers = _model(method, 3).eval()
    x = torch.randn(2, 14, 8)
    with torch.no_grad():
        full = _forward(layers, x)
        # prefill 5 tokens, then one token at a time (crossing segment boundaries at 8 and 12)
        caches = [SegmentCache() for _ in layers]

        def step(chunk, start):
            h, state = chunk, None
            for layer, cache in zip(layers, caches):
                y, aux = layer(h, state=state, return_aux=True, cache=cache, start_pos=start)
                state = aux.state
                h = h + y
            return h

        outs = [step(x[:, :5], 0)]
        for t in range(5, 14):
            outs.append(step(x[:, t : t + 1], t))
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_segment_cache_requires_causal_routing():
    layer = MoEFeedForward(
        MoEConfig(method="smear", d_model=8, d_ff=16, segment_len=4, first_segment="self")
    ).eval()
    with pytest.raises(ValueError, match="incremental decoding needs causal"):
        layer(torch.randn(1, 3, 8), cache=SegmentCache())


# ---------------------------------------------------------------- devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["smoe", "smear", "camex", "namex-full-mom"])
def test_cuda_matches_cpu(method):
    layers = _model(method, 3)
    x = torch.randn(2, 12, 8)
    expected = _forward(layers, x)
    layers_cuda = layers.to("cuda")
    out = _forward(layers_cuda, x.cuda())
    torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = _forward(layers_cuda, x.cuda())
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layers_cuda.parameters() if p.grad is not None)


# ---------------------------------------------------------------- state device and dtype
def _two_layers(method="namex-full-mom"):
    torch.manual_seed(0)
    cfg = MoEConfig(method=method, d_model=8, d_ff=16, num_experts=4, segment_len=4)
    return MoEFeedForward(cfg, owns_base=True), MoEFeedForward(cfg, owns_base=False)


@pytest.mark.parametrize("method", ["ep-camex", "namex-full-mom"])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_state_follows_the_dtype_of_the_layer_it_enters(method, dtypes):
    first, second = _two_layers(method)
    first.to(dtypes[0])
    second.to(dtypes[1])
    x = torch.randn(2, 8, 8)
    _, aux = first(x.to(dtypes[0]), state=None, return_aux=True)
    out, aux2 = second(x.to(dtypes[1]), state=aux.state, return_aux=True)
    assert out.dtype == dtypes[1]
    assert all(t.dtype == dtypes[1] for t in aux2.state.base.values())
    if aux2.state.momentum_re is not None:
        assert all(t.dtype == dtypes[1] for t in aux2.state.momentum_re.values())
    # the same as handing over a converted state by hand, and differentiable back to layer 1
    converted = replace(aux.state, base={k: v.to(dtypes[1]) for k, v in aux.state.base.items()})
    if aux.state.momentum_re is not None:
        converted.momentum_re = {k: v.to(dtypes[1]) for k, v in aux.state.momentum_re.items()}
        converted.momentum_im = {k: v.to(dtypes[1]) for k, v in aux.state.momentum_im.items()}
    torch.testing.assert_close(second(x.to(dtypes[1]), state=converted), out)
    out.sum().backward()
    assert first.w_in.grad is not None and first.w_in.grad.abs().sum() > 0


def test_state_moves_to_the_device_of_the_layer_it_enters():
    """The code path without a second device: the meta device stands in for it."""
    first, second = _two_layers("namex-full-mom")
    second.to("meta")
    _, aux = first(torch.randn(2, 8, 8), return_aux=True)
    moved = second._adopt(aux.state)
    for group in (moved.base, moved.momentum_re, moved.momentum_im):
        for t in group.values():
            assert t.device.type == "meta" and t.dtype == torch.float32
    assert all(t.grad_fn is not None for t in moved.base.values())  # a differentiable move
    assert moved.alpha.device.type == "meta" and moved.alpha.dtype == aux.state.alpha.dtype
    assert moved.status.device.type == "meta"
    assert second._adopt(aux.state) is not aux.state
    assert first._adopt(aux.state) is aux.state  # nothing to move


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_state_crosses_from_cpu_to_cuda():
    first, second = _two_layers("namex-full-mom")
    x = torch.randn(2, 8, 8)
    _, aux = first(x, return_aux=True)
    expected = second(x, state=aux.state)
    second.cuda()
    out = second(x.cuda(), state=aux.state)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert first.base_w_in.grad.abs().sum() > 0


# ---------------------------------------------------------------- structure
def test_moe_modules_import_no_cycle():
    """layer -> aux -> state; the chain sits above the layer (TYPE_CHECKING imports aside)."""
    import ast
    from pathlib import Path

    import nashmoe.moe as pkg

    root = Path(pkg.__file__).parent
    graph = {}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nashmoe.moe."):
                deps.add(node.module.split(".")[2])
        graph[path.stem] = deps

    def reaches(start, target, seen=()):
        return any(d == target or (d not in seen and reaches(d, target, (*seen, d)))
                   for d in graph.get(start, ()))  # fmt: skip

    assert not [m for m in graph if reaches(m, m)]
    assert "chain" not in graph["layer"] and "layer" in graph["chain"]


def test_moe_mlp_adapter_matches_the_layer():
    torch.manual_seed(0)
    layer = MoEFeedForward(MoEConfig(method="smear", d_model=8, d_ff=16, segment_len=4))
    mlp = MoEMLP(layer)
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(mlp(x, "ignored", also="ignored"), layer(x))
    torch.testing.assert_close(mlp(x[0]), layer(x[:1])[0])  # [tokens, hidden]: one sequence
    torch.testing.assert_close(mlp(x[None]), layer(x)[None])
    with pytest.raises(TypeError, match="MoEFeedForward"):
        MoEMLP(nn.Linear(2, 2))


def test_segment_cache_refuses_non_contiguous_positions():
    layer = _model("smear", 1)[0].eval()
    cache = SegmentCache()
    with torch.no_grad():
        layer(torch.randn(1, 5, 8), cache=cache, start_pos=0)
        layer(torch.randn(1, 1, 8), cache=cache, start_pos=5)
        with pytest.raises(ValueError, match="holds 6 tokens"):
            layer(torch.randn(1, 1, 8), cache=cache, start_pos=4)


@pytest.mark.parametrize("given_tau", [True, False])
def test_domain_sum_gradients_equal_autograd_through_tau(given_tau):
    """NAMEx's direction Σ α_i (E_i − E_m) (fused._DomainSum), from a detached τ or from E and
    E_m directly: value and the analytic gradients to E_i and E_m equal plain autograd through
    τ = E − E_m."""
    from nashmoe.moe.fused import _DomainSum

    torch.manual_seed(0)
    experts = torch.randn(4, 6, 5, dtype=torch.float64, requires_grad=True)
    base = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(4, dtype=torch.float64)
    weight = torch.randn(6, 5, dtype=torch.float64)
    tau = (experts - base).detach() if given_tau else None
    out = _DomainSum.apply(alpha, tau, experts, base)
    ref = torch.einsum("n,n...->...", alpha, experts - base)
    torch.testing.assert_close(out, ref)
    got = torch.autograd.grad((out * weight).sum(), [experts, base])
    want = torch.autograd.grad((ref * weight).sum(), [experts, base])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_difference_gram_equals_gram_of_tau(monkeypatch, dtype):
    """The chunked Gram matrix of E_i − E_m (no τ written out) equals the plain one, over
    several chunks and a remainder, summed over tensors; low precision is differenced and
    accumulated in float32."""
    from nashmoe.moe import layer as layer_module

    monkeypatch.setattr(layer_module, "_GRAM_CHUNK", 7)
    torch.manual_seed(0)
    experts = {"a": torch.randn(3, 6, 5).to(dtype), "b": torch.randn(3, 4).to(dtype)}
    base = {"a": torch.randn(6, 5).to(dtype), "b": torch.randn(4).to(dtype)}
    got = layer_module._difference_gram(experts, base)
    acc = torch.float64 if dtype == torch.float64 else torch.float32  # differences formed in it
    want = sum(
        (lambda v: v @ v.T)((experts[k].to(acc) - base[k].to(acc)).reshape(3, -1).double())
        for k in experts
    )
    assert got.dtype == acc
    tol = {} if acc == torch.float64 else dict(rtol=1e-6, atol=1e-5)  # float32 accumulation
    torch.testing.assert_close(got.double(), want, **tol)


@pytest.mark.parametrize("method", ["namex", "namex-full-mom"])
def test_direction_in_parameter_precision_under_autocast(method, monkeypatch):
    """Under bf16 autocast the propagation direction is formed in the parameters' float32,
    whether the merge forms it (unit-chunked bf16 path: a plain expression) or _DomainSum does:
    the next base is float32 and the two agree to float32 rounding."""
    from nashmoe.moe import layer as layer_module

    from .test_reference import make_stack

    x = torch.randn(2, 12, 6, generator=torch.Generator().manual_seed(0))
    bases = []
    for fused in (True, False):
        monkeypatch.setattr(layer_module, "_fusable", lambda fused=fused: fused)
        layers = [layer.float() for layer in make_stack(method, num_layers=2)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, aux = layers[0](x, return_aux=True)
        base = aux.state.base
        assert all(t.dtype == torch.float32 for t in base.values())
        bases.append(base)
    for k in bases[0]:
        torch.testing.assert_close(bases[0][k], bases[1][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["namex", "namex-full-mom"])
def test_direction_left_to_the_merge_matches_the_separate_one(method, monkeypatch):
    """NAMEx's direction formed by the merge (merge_and_apply(direction=), the eager default)
    gives the same outputs, propagation and gradients as the separate _DomainSum path, and is
    actually taken."""
    from nashmoe.moe import layer as layer_module

    from .naive import module_stack
    from .test_reference import grads, make_stack

    x = torch.randn(2, 12, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    calls = []
    real = layer_module.merge_and_apply

    def spy(*args, **kwargs):
        calls.append(kwargs.get("direction") is not None)
        return real(*args, **kwargs)

    results = []
    for fused in (True, False):
        monkeypatch.setattr(layer_module, "_fusable", lambda fused=fused: fused)
        monkeypatch.setattr(layer_module, "merge_and_apply", spy)
        layers = make_stack(method, num_layers=3)
        calls.clear()
        out = module_stack(layers, x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        # the first two layers propagate (the stack does not mark a last layer)
        assert calls[:2] == [fused, fused]
        results.append((out.detach(), grads(layers)))
    (out_f, g_f), (out_s, g_s) = results
    torch.testing.assert_close(out_f, out_s)
    assert g_f.keys() == g_s.keys()
    for k in g_f:
        torch.testing.assert_close(g_f[k], g_s[k], msg=k)
