"""The grouped-matrix-product top-k dispatch (``torch._grouped_mm``) against a loop over tokens
and against the padded fallback: outputs and gradients, empty experts, batch 0, bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from nashmoe.moe import MoEFeedForward, ffn
from nashmoe.moe.ffn import _grouped_mm_ok, activation_fn, topk_ffn
from nashmoe.moe.layout import ExpertLayout

pytestmark = pytest.mark.skipif(
    not _grouped_mm_ok(torch.empty(0), {"w_in": torch.empty(1, 16, 8)}),
    reason="torch._grouped_mm unsupported in this build",
)


def _problem(m=23, n=5, k=2, glu=False, bias=True, skip=(), seed=0):
    torch.manual_seed(seed)
    layout = ExpertLayout(8, 16, glu=glu, bias=bias)
    experts = {
        name: torch.randn(n, *s, dtype=torch.float64, requires_grad=True)
        for name, s in layout.shapes.items()
    }
    x = torch.randn(m, 8, dtype=torch.float64, requires_grad=True)
    allowed = [i for i in range(n) if i not in skip]
    scores = torch.rand(m, len(allowed))
    idx = torch.tensor(allowed)[scores.topk(k, dim=-1).indices]
    w = torch.rand(m, k, dtype=torch.float64, requires_grad=True)
    return x, experts, idx, w


def _loop(x, experts, idx, w, act):
    """y_t = Σ_j w[t, j] f(x_t; E_idx[t, j]), one token and one expert at a time."""
    rows = []
    for t in range(x.shape[0]):
        y = torch.zeros_like(x[t])
        for j in range(idx.shape[1]):
            e = {name: v[idx[t, j]] for name, v in experts.items()}
            pre = e["w_in"] @ x[t] + (e["b_in"] if "b_in" in e else 0)
            h = act(e["w_gate"] @ x[t]) * pre if "w_gate" in e else act(pre)
            y = y + w[t, j] * (e["w_out"] @ h + (e["b_out"] if "b_out" in e else 0))
        rows.append(y)
    return torch.stack(rows) if rows else x.new_zeros(x.shape)


def _grads(out, probe, tensors):
    return torch.autograd.grad((out * probe).sum(), tensors, allow_unused=True)


@pytest.mark.parametrize(
    ("glu", "bias", "skip", "m", "k"),
    [
        (False, True, (), 23, 2),
        (True, True, (1, 3), 19, 2),  # two experts receive no token
        (True, False, (), 11, 1),
        (False, False, (0,), 9, 3),
        (False, True, (), 0, 2),  # batch 0
    ],
)
@pytest.mark.parametrize("row_ranges", [False, True], ids=["one-range", "16-row-ranges"])
def test_grouped_matches_loop_and_fallback(glu, bias, skip, m, k, row_ranges, monkeypatch):
    """``16-row-ranges``: the grouped products run over ranges of 16 sorted rows (the CPU's
    bound on activation bytes set to its minimum), which split experts' rows and leave experts
    without rows in a range (clamped offsets)."""
    if row_ranges:
        monkeypatch.setattr(ffn, "_GROUPED_ROW_BYTES", 1)
        assert ffn._row_chunk(46, 16, 4, "cpu") == 16
    x, experts, idx, w = _problem(m=m, k=k, glu=glu, bias=bias, skip=skip)
    act = activation_fn("silu" if glu else "gelu")
    tensors = [x, w, *experts.values()]
    ref = _loop(x, experts, idx, w, act)  # float64
    probe = torch.randn_like(ref)
    fallback = topk_ffn(x, experts, idx, w, act, grouped=False)
    torch.testing.assert_close(fallback, ref)
    x32 = x.detach().float().requires_grad_(True)
    w32 = w.detach().float().requires_grad_(True)
    e32 = {name: v.detach().float().requires_grad_(True) for name, v in experts.items()}
    out = topk_ffn(x32, e32, idx, w32, act, grouped=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    if m == 0:
        return
    g_ref = _grads(ref, probe, tensors)
    g = _grads(out, probe.float(), [x32, w32, *e32.values()])
    for a, b, name in zip(g, g_ref, ["x", "w", *experts]):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4, msg=name)
    for i in skip:  # an expert without tokens gets an exact zero gradient
        for name, gi in zip(experts, g[2:]):
            assert gi[i].abs().max() == 0, name


def test_default_path_is_grouped_for_float32_and_fallback_for_float64():
    assert _grouped_mm_ok(torch.empty(0), {"w_in": torch.empty(4, 16, 8)})
    assert not _grouped_mm_ok(torch.empty(0, dtype=torch.float64), {"w_in": torch.empty(4, 16, 8)})
    assert not _grouped_mm_ok(torch.empty(0), {"w_in": torch.empty(4, 6, 8)})  # 24-byte rows


def test_smoe_layer_under_bf16_autocast():
    torch.manual_seed(0)
    layer = MoEFeedForward(method="smoe", d_model=16, d_ff=32, num_experts=4, init_std=0.2)
    x = torch.randn(2, 9, 16)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x).float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())


def test_smoe_layer_compiles_to_one_graph_under_bf16_autocast():
    """bf16 under torch.compile (aot_eager, fullgraph) takes the grouped path (float32 compiles
    through the padded fallback: the op's fake kernel takes bf16 only)."""
    torch.manual_seed(0)
    layer = MoEFeedForward(method="smoe", d_model=16, d_ff=32, num_experts=4, init_std=0.2)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 9, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = layer(x)
        out = compiled(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
