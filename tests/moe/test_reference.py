"""Every method against the naive reference: outputs and all gradients, float64, several layers."""

from __future__ import annotations

import pytest
import torch

from nashmoe.moe import METHODS, MoEConfig, MoEFeedForward

from .naive import module_stack, naive_stack

D, F_, N = 6, 8, 3


def make_stack(method, num_layers=3, seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(method=method, d_model=D, d_ff=F_, num_experts=N, init_std=0.25)
    if method in ("namex", "namex-full", "namex-mom", "namex-full-mom"):
        fields["nash_tol"] = 1e-12
        fields["nash_max_iter"] = 50
    if method not in ("dense", "smoe") and "unit" not in overrides:
        fields["segment_len"] = 4
    fields.update(overrides)
    cfg = MoEConfig(**fields)
    layers = [MoEFeedForward(cfg, owns_base=(i == 0)).double() for i in range(num_layers)]
    # Perturb parameters away from their symmetric initialisation (curvature = c·I, prior = 0).
    with torch.no_grad():
        for layer in layers:
            for name, p in layer.named_parameters():
                if name.startswith("curvature") or name == "prior_logits":
                    p.add_(0.1 * torch.randn_like(p))
    return layers


def grads(layers):
    return {
        f"{i}.{name}": p.grad.clone()
        for i, layer in enumerate(layers)
        for name, p in layer.named_parameters()
        if p.grad is not None
    }


def compare(layers, x, attention_mask=None, atol=1e-9):
    x1 = x.clone().requires_grad_(True)
    out = module_stack(layers, x1, attention_mask)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    g_module, gx_module = grads(layers), x1.grad.clone()
    for layer in layers:
        layer.zero_grad()
    x2 = x.clone().requires_grad_(True)
    ref = naive_stack(layers, x2, attention_mask)
    (ref * weight).sum().backward()
    g_ref = grads(layers)
    atol = atol * max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(out, ref, atol=atol, rtol=1e-7)
    torch.testing.assert_close(gx_module, x2.grad, atol=atol, rtol=1e-6)
    assert g_module.keys() == g_ref.keys()
    for key in g_ref:
        torch.testing.assert_close(g_module[key], g_ref[key], atol=atol, rtol=1e-6, msg=key)
    return g_module


@pytest.mark.parametrize("method", METHODS)
def test_matches_reference_segment_prior(method):
    layers = make_stack(method)
    x = torch.randn(2, 10, D, dtype=torch.float64)  # 3 segments of 4, the last partial
    g = compare(layers, x)
    if layers[0].config.propagates:
        # gradients reach E_m^(1) through several layers of propagation
        assert g["0.base_w_in"].abs().sum() > 0


@pytest.mark.parametrize("method", ["camex", "ep-camex", "namex-mom"])
def test_matches_reference_with_curvature(method):
    layers = make_stack(method, curvature_rank=1, curvature_init=1.3)
    compare(layers, torch.randn(2, 9, D, dtype=torch.float64))


@pytest.mark.parametrize("method", ["smear", "camex", "namex-full-mom"])
def test_matches_reference_segment_self(method):
    compare(make_stack(method, first_segment="self"), torch.randn(2, 9, D, dtype=torch.float64))


@pytest.mark.parametrize("method", ["smear", "ep-camex", "namex-mom"])
def test_matches_reference_sequence_units_with_mask(method):
    layers = make_stack(method, unit="sequence")
    x = torch.randn(3, 7, D, dtype=torch.float64)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    compare(layers, x, attention_mask=mask)


@pytest.mark.parametrize("method", ["smear", "camex", "namex"])
def test_matches_reference_token_units(method):
    compare(make_stack(method, unit="token"), torch.randn(2, 5, D, dtype=torch.float64))


@pytest.mark.parametrize("method", ["smear", "namex-full"])
def test_matches_reference_image_units(method):
    compare(make_stack(method, unit="image"), torch.randn(2, 6, D, dtype=torch.float64))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(glu=True, bias=True, activation="silu"),
        dict(curvature_rank=0),
        dict(curvature_rank=2, curvature_init=0.7),
        dict(merge_mask="ties"),
        dict(step_norm="mean"),
        dict(bargain_on="curved_tau"),
        dict(nash_every=2),
        dict(learn_eta=False, eta=1.5, gamma=0.3),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_matches_reference_variants(overrides):
    method = "namex-mom" if "nash_every" in overrides else "namex-full-mom"
    if (
        "nash_every" not in overrides
        and "step_norm" not in overrides
        and "bargain_on" not in overrides
    ):
        method = "namex-full-mom"
    compare(
        make_stack(method, num_layers=4, **overrides), torch.randn(2, 8, D, dtype=torch.float64)
    )


@pytest.mark.parametrize("method", ["smoe"])
def test_smoe_variants(method):
    compare(
        make_stack(method, top_k=1, glu=True, bias=True), torch.randn(2, 7, D, dtype=torch.float64)
    )
    compare(make_stack(method, top_k=3), torch.randn(2, 7, D, dtype=torch.float64))


@pytest.mark.parametrize("method", ["camex", "namex-full-mom"])
@pytest.mark.parametrize("unit", ["segment", "token"])
def test_eta_stays_in_float64(method, unit):
    """η not representable in float32 (as after training): the float64 layer keeps it in float64
    and matches the float64 reference at 1e-12 (a float32 cast of η costs about 1e-7)."""
    layers = make_stack(method, unit=unit, **({"segment_len": 4} if unit == "segment" else {}))
    with torch.no_grad():
        for layer in layers:
            layer.eta.fill_(1.0 / 3.0 + 1e-9)
    compare(layers, torch.randn(2, 8, D, dtype=torch.float64), atol=1e-12)
