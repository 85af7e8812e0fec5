"""Causality, special cases, defaults that must not collapse, dtypes and fallbacks."""

from __future__ import annotations

import math

import pytest
import torch

from nashmoe.bargaining import NashStatus
from nashmoe.moe import METHODS, PROPAGATING_METHODS, MoEConfig, MoEFeedForward

MERGING = [m for m in METHODS if m not in ("dense", "smoe")]


def stack(method, n_layers=3, seed=0, d=8, f=16, n=4, **kw):
    torch.manual_seed(seed)
    if method not in ("dense", "smoe") and kw.get("unit", "segment") == "segment":
        kw.setdefault("segment_len", 4)
    cfg = MoEConfig(method=method, d_model=d, d_ff=f, num_experts=n, init_std=0.2, **kw)
    return [MoEFeedForward(cfg, owns_base=(i == 0)) for i in range(n_layers)]


def run(layers, x, reset_warm_start=False, **kw):
    if reset_warm_start:  # identical solver starts: bitwise identical α across calls
        for layer in layers:
            if hasattr(layer, "alpha_prev"):
                layer.alpha_prev.zero_()
    h, state, auxes = x, None, []
    for layer in layers:
        y, aux = layer(h, state=state, return_aux=True, **kw)
        state = aux.state
        auxes.append(aux)
        h = h + y
    return h, auxes


# ---------------------------------------------------------------- causality
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("segment_len", [1, 3])
def test_changing_a_token_never_changes_earlier_outputs(method, segment_len):
    kw = {} if method in ("dense", "smoe") else {"segment_len": segment_len}
    layers = stack(method, **kw)
    x = torch.randn(2, 10, 8)
    base, _ = run(layers, x, reset_warm_start=True)
    for t in range(9):
        x2 = x.clone()
        x2[:, t + 1] += torch.randn(2, 8)
        out, _ = run(layers, x2, reset_warm_start=True)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"position {t} saw token {t + 1}"
        assert not torch.equal(out[:, t + 1], base[:, t + 1])


@pytest.mark.parametrize("method", ["smear", "camex", "namex-full-mom"])
def test_first_segment_self_leaks_the_future_inside_segment_zero(method):
    """Documents the public CAMEx/Lory behaviour: segment 0 is routed by its own mean."""
    layers = stack(method, first_segment="self")
    x = torch.randn(1, 12, 8)
    base, _ = run(layers, x, reset_warm_start=True)
    x2 = x.clone()
    x2[:, 3] += 1.0  # the last token of segment 0
    out, _ = run(layers, x2, reset_warm_start=True)
    assert not torch.allclose(out[:, 0], base[:, 0])  # position 0 saw position 3: non-causal
    prior = stack(method, first_segment="prior")
    a = run(prior, x2, reset_warm_start=True)[0][:, 0]
    assert torch.equal(a, run(prior, x, reset_warm_start=True)[0][:, 0])


# ---------------------------------------------------------------- the base expert matters
@pytest.mark.parametrize("method", ["camex", *PROPAGATING_METHODS])
def test_output_depends_on_the_first_base_expert_with_defaults(method):
    cfg = MoEConfig(method=method, d_model=8, d_ff=16, num_experts=4)  # all defaults
    torch.manual_seed(0)
    layers = [MoEFeedForward(cfg, owns_base=(i == 0)) for i in range(3)]
    out, _ = run(layers, torch.randn(2, 512, 8))
    out.square().mean().backward()
    grad = math.sqrt(sum(float(p.grad.square().sum()) for p in layers[0].base_tensors().values()))
    assert grad > 1e-6, "the merge collapsed to SMEAR: the base expert gets no gradient"
    # and changing E_m^(1) changes the output of the LAST layer (through the propagation)
    with torch.no_grad():
        layers[0].base_w_in.add_(0.1)
        x = torch.randn(1, 512, 8)
        h1 = run(layers, x)[0]
        layers[0].base_w_in.sub_(0.1)
        h0 = run(layers, x)[0]
    assert (h1 - h0).abs().max() > 1e-4


def test_collapse_to_smear_is_real_with_identity_curvature_and_unit_eta():
    """The spec's warning: identity curvature, η = 1 and softmax scores reduce CAMEx to SMEAR."""
    torch.manual_seed(0)
    camex = MoEFeedForward(
        MoEConfig(
            method="camex",
            d_model=8,
            d_ff=16,
            num_experts=4,
            eta=1.0,
            curvature_rank=0,
            segment_len=4,
        )
    )
    smear = MoEFeedForward(
        MoEConfig(method="smear", d_model=8, d_ff=16, num_experts=4, segment_len=4)
    )
    smear.load_state_dict({k: v for k, v in camex.state_dict().items() if k in smear.state_dict()})
    x = torch.randn(2, 12, 8)
    torch.testing.assert_close(camex(x), smear(x), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- special cases
def _names(layers):
    return [dict(layer.named_parameters()) for layer in layers]


def _copy(src, dst):
    dst_params = _names(dst)
    for s, d in zip(_names(src), dst_params):
        for k, v in s.items():
            d[k].data.copy_(v.data)


def test_complex_momentum_with_r_zero_equals_plain_namex():
    plain = stack("namex-full", n_layers=4)
    mom = stack("namex-full-mom", n_layers=4, momentum=0.0, momentum_angle=0.7)
    _copy(plain, mom)
    x = torch.randn(2, 12, 8)
    torch.testing.assert_close(run(mom, x)[0], run(plain, x)[0], atol=1e-6, rtol=1e-6)


def test_opposite_momentum_angles_give_identical_models():
    """The step uses Re μ and the inputs ΔE are real, so φ and −φ give conjugate μ: the same
    bases, outputs and gradients bit for bit (only Im μ flips sign). A grid over ±φ (the paper's)
    measures each angle twice."""
    x = torch.randn(2, 12, 8)
    results = []
    for angle in (0.5, -0.5):
        layers = stack("namex-full-mom", n_layers=4, momentum=0.7, momentum_angle=angle)
        out, auxes = run(layers, x)
        out.square().sum().backward()
        grads = [
            p.grad.clone() for layer in layers for p in layer.parameters() if p.grad is not None
        ]
        results.append((out, auxes, grads))
    (out_a, aux_a, grad_a), (out_b, aux_b, grad_b) = results
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grad_a, grad_b)) and grad_a
    for a, b in zip(aux_a, aux_b):
        if a.state is None:
            continue
        for name in a.state.momentum_re:
            assert torch.equal(a.state.momentum_re[name], b.state.momentum_re[name])
            assert torch.equal(a.state.momentum_im[name], -b.state.momentum_im[name])
    assert any(
        a.state is not None and any(bool(t.abs().max() > 0) for t in a.state.momentum_im.values())
        for a in aux_a
    )  # the imaginary part is not trivially zero


def test_zero_angle_is_real_heavy_ball_momentum():
    """φ = 0: μ' = r μ + ΔE with μ real (the imaginary part stays 0)."""
    layers = stack("namex-full-mom", n_layers=4, momentum=0.6, momentum_angle=0.0)
    _, auxes = run(layers, torch.randn(1, 8, 8))
    for aux in auxes:
        for im in aux.state.momentum_im.values():
            assert torch.equal(im, torch.zeros_like(im))
    # and the bases follow E_{l+1} = E_l + γ μ_{l+1}, μ_{l+1} = r μ_l + ΔE_l
    gamma, r = layers[0].config.gamma, 0.6
    prev_mu = prev_state = None
    for layer, aux in zip(layers, auxes):
        mu = aux.state.momentum_re
        if prev_mu is not None:
            base_l = prev_state.base
            players = {k: getattr(layer, k) - base_l[k] for k in base_l}
            delta = {
                k: (aux.alpha.float() @ p.reshape(p.shape[0], -1)).view(p.shape[1:])
                for k, p in players.items()
            }
            for k in mu:
                torch.testing.assert_close(mu[k], r * prev_mu[k] + delta[k], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(aux.state.base[k], base_l[k] + gamma * mu[k])
        prev_mu, prev_state = mu, aux.state


def test_nash_every_one_is_full_and_infinity_solves_once():
    full = stack("namex-full", n_layers=4)
    every1 = stack("namex", n_layers=4, nash_every=1)
    once = stack("namex", n_layers=4)
    every2 = stack("namex", n_layers=4, nash_every=2)
    for other in (every1, once, every2):
        _copy(full, other)
    x = torch.randn(2, 8, 8)
    out_full, aux_full = run(full, x)
    out_every1, _ = run(every1, x)
    torch.testing.assert_close(out_every1, out_full)  # Δl = 1 is NAMEx-Full exactly
    _, aux_once = run(once, x)
    assert [a.solved for a in aux_once] == [True, False, False, False]
    for a in aux_once[1:]:  # α of the first layer reused by every later layer
        assert torch.equal(a.alpha, aux_once[0].alpha)
    assert [a.solved for a in aux_full] == [True, True, True, True]
    assert not torch.allclose(aux_full[2].alpha, aux_once[2].alpha)
    _, aux_two = run(every2, x)
    assert [a.solved for a in aux_two] == [True, False, True, False]
    assert torch.equal(aux_two[1].alpha, aux_two[0].alpha)
    assert torch.equal(aux_two[3].alpha, aux_two[2].alpha)


@pytest.mark.parametrize("method", METHODS)
def test_single_expert(method):
    kw = {"top_k": 1} if method == "smoe" else {}
    layers = stack(method, n=1, **kw)
    out, auxes = run(layers, torch.randn(2, 9, 8))
    assert torch.isfinite(out).all()
    if method in ("namex", "namex-full", "namex-mom", "namex-full-mom"):
        assert auxes[0].alpha.shape == (1,)
        assert int(auxes[0].status) == NashStatus.OK


@pytest.mark.parametrize("method", ["namex", "namex-full-mom"])
def test_upcycled_experts_fall_back_to_uniform_and_count(method):
    """Experts copied from one dense FFN and equal to the base: τ = 0, K = 0."""
    layers = stack(method, n_layers=2)
    with torch.no_grad():
        for name, base in layers[0].base_tensors().items():
            getattr(layers[0], name).copy_(base.expand_as(getattr(layers[0], name)))
    x = torch.randn(2, 8, 8, requires_grad=True)
    out, auxes = run(layers, x)
    assert int(auxes[0].status) == NashStatus.DEGENERATE
    assert int(auxes[0].fallbacks) == 1
    torch.testing.assert_close(auxes[0].alpha, torch.full((4,), 0.25, dtype=auxes[0].alpha.dtype))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    for p in layers[0].parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_infeasible_bargaining_is_reported_and_handled():
    layers = stack("namex-full", n_layers=2, n=2)
    with torch.no_grad():  # τ_2 = −τ_1: no direction improves both experts
        for name, base in layers[0].base_tensors().items():
            w = getattr(layers[0], name)
            w[1].copy_(2 * base - w[0])
    out, auxes = run(layers, torch.randn(2, 8, 8))
    assert int(auxes[0].status) == NashStatus.INFEASIBLE
    assert int(auxes[0].fallbacks) == 1
    assert torch.isfinite(out).all()


def test_warm_start_is_kept_per_layer_and_used():
    layers = stack("namex-full", n_layers=2)
    x = torch.randn(1, 8, 8)
    _, first = run(layers, x)
    assert all(bool((layer.alpha_prev > 0).all()) for layer in layers)
    _, second = run(layers, x)
    assert int(second[0].status) == NashStatus.OK
    torch.testing.assert_close(second[0].alpha, first[0].alpha)


# ---------------------------------------------------------------- masks, dtypes, errors
@pytest.mark.parametrize("method", ["smear", "camex", "namex-mom"])
def test_sequence_routing_ignores_padding(method):
    layers = stack(method, unit="sequence")
    x = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    out, _ = run(layers, x, attention_mask=mask)
    padded = torch.cat([x, 100 * torch.randn(2, 5, 8)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    out_padded, _ = run(layers, padded, attention_mask=padded_mask)
    torch.testing.assert_close(out_padded[:, :6], out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias_balancing", [False, True])
def test_smoe_mask_keeps_padding_out_of_losses_and_load(bias_balancing):
    """smoe with attention_mask: the router losses, load, importance and expert_load counts are
    those of the real tokens alone (run unpadded); the real tokens' outputs do not change."""
    torch.manual_seed(0)
    layer = MoEFeedForward(
        MoEConfig(
            method="smoe",
            d_model=8,
            d_ff=16,
            num_experts=4,
            z_loss_coef=0.1,
            bias_balancing=bias_balancing,
        )
    )
    lengths = [5, 2]
    x = torch.randn(2, 5, 8)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    padded = x.clone()
    padded[~mask] = 50.0  # padding that would dominate the losses if counted
    real = torch.cat([x[i, :n] for i, n in enumerate(lengths)])[None]  # [1, 7, 8]
    if bias_balancing:
        layer.expert_load.zero_()
    ref, ref_aux = layer(real, return_aux=True)
    ref_load = layer.expert_load.clone() if bias_balancing else None
    if bias_balancing:
        layer.expert_load.zero_()
    out, aux = layer(padded, attention_mask=mask, return_aux=True)
    torch.testing.assert_close(out[mask], ref[0])
    for name in ("balance_loss", "z_loss", "loss", "load", "importance"):
        torch.testing.assert_close(getattr(aux, name), getattr(ref_aux, name), msg=name)
    if bias_balancing:
        torch.testing.assert_close(layer.expert_load, ref_load)
        assert float(layer.expert_load.sum()) == 7 * layer.config.top_k
    # without the mask the padding counts: the losses differ
    _, unmasked = layer(padded, return_aux=True)
    assert not torch.allclose(unmasked.z_loss, ref_aux.z_loss)
    # gradients reach the router through the masked losses only from real tokens
    layer.zero_grad()
    aux_only = layer(padded, attention_mask=mask, return_aux=True)[1].loss
    aux_only.backward()
    masked_grad = layer.router.grad.clone()
    layer.zero_grad()
    layer(real, return_aux=True)[1].loss.backward()
    torch.testing.assert_close(masked_grad, layer.router.grad)


def test_smoe_fully_masked_batch_gives_zero_losses():
    layer = MoEFeedForward(MoEConfig(method="smoe", d_model=8, d_ff=16, num_experts=4))
    out, aux = layer(torch.randn(2, 3, 8), attention_mask=torch.zeros(2, 3), return_aux=True)
    assert out.shape == (2, 3, 8)
    assert float(aux.balance_loss.detach()) == 0.0 and float(aux.z_loss.detach()) == 0.0
    assert torch.isfinite(aux.importance).all()


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_autocast_on_cpu(method):
    layers = stack(method)
    x = torch.randn(2, 8, 8)
    ref, _ = run(layers, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, auxes = run(layers, x)
    assert out.dtype in (torch.float32, torch.bfloat16)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)
    out.float().sum().backward()
    for layer in layers:
        for p in layer.parameters():
            if p.grad is not None:
                assert p.grad.dtype == p.dtype and torch.isfinite(p.grad).all()
    for aux in auxes:
        if aux.alpha is not None:
            assert aux.alpha.dtype in (torch.float32, torch.float64)


@pytest.mark.parametrize("method", ["smoe", "smear", "namex-full-mom"])
def test_float64_module(method):
    layers = [layer.double() for layer in stack(method)]
    out, _ = run(layers, torch.randn(2, 8, 8, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="nope"), "unknown method"),
        (dict(method="smoe", top_k=5), "top_k"),
        (dict(method="camex", gamma=1.0), "gamma is only used by"),
        (dict(method="smear", eta=2.0), "eta is only used by"),
        (dict(method="namex", momentum=0.5), "momentum is only used by"),
        (dict(method="namex-mom", momentum=1.0), "momentum r must be in"),
        (dict(method="namex-mom", momentum_angle=4.0), "momentum_angle"),
        (dict(method="namex-full", nash_every=2), "re-solves at every layer"),
        (dict(method="namex", nash_every=0), "nash_every"),
        (dict(method="namex", step_norm="max"), "step_norm"),
        (dict(method="namex", bargain_on="x"), "bargain_on"),
        (dict(method="camex", merge_mask="dare"), "merge_mask"),
        (dict(method="camex", curvature_rank=-1), "curvature_rank"),
        (dict(method="smoe", unit="segment"), "unit is only used by"),
        (dict(method="smear", unit="pixel"), "unknown unit"),
        (dict(method="smear", unit="sequence", segment_len=4), "segment_len"),
        (dict(method="smear", first_segment="next"), "first_segment"),
        (dict(method="smear", segment_len=0), "segment_len"),
        (dict(method="dense", activation="tanh"), "unknown activation"),
        (dict(method="dense", d_model=0), "d_model"),
        (dict(method="dense", balance_coef=-1.0), "balance_coef"),
    ],
)
def test_bad_configurations_raise_clear_errors(kwargs, message):
    fields = dict(d_model=8, d_ff=16, num_experts=4)
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MoEConfig(**fields)


def test_bad_inputs_raise_clear_errors():
    layer = MoEFeedForward(MoEConfig(method="namex", d_model=8, d_ff=16, segment_len=4))
    with pytest.raises(ValueError, match="expected input"):
        layer(torch.randn(8, 8))
    with pytest.raises(ValueError, match="attention_mask is only used"):
        layer(torch.randn(1, 8, 8), attention_mask=torch.ones(1, 8))
    dense = MoEFeedForward(MoEConfig(method="dense", d_model=8, d_ff=16))
    with pytest.raises(ValueError, match=r"attention_mask is only used .* not by 'dense'"):
        dense(torch.randn(1, 8, 8), attention_mask=torch.ones(1, 8))
    smoe = MoEFeedForward(MoEConfig(method="smoe", d_model=8, d_ff=16))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[batch, seq\]"):
        smoe(torch.randn(2, 5, 8), attention_mask=torch.ones(2, 4))
    later = MoEFeedForward(layer.config, owns_base=False)
    with pytest.raises(ValueError, match="received no state"):
        later(torch.randn(1, 8, 8))
    seq = MoEFeedForward(MoEConfig(method="smear", d_model=8, d_ff=16, unit="sequence"))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        seq(torch.randn(2, 5, 8), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="masks every token"):
        seq(torch.randn(2, 5, 8), attention_mask=torch.zeros(2, 5))


def test_aux_and_last_aux():
    layers = stack("namex-full-mom")
    _, auxes = run(layers, torch.randn(2, 8, 8))
    for layer, aux in zip(layers, auxes):
        assert layer.last_aux is aux
        assert aux.load.shape == (4,) and aux.importance.shape == (4,)
        torch.testing.assert_close(aux.load.sum(), torch.tensor(1.0))
        assert aux.balance_loss >= 0.99  # N Σ f P ≥ 1 for distributions (Cauchy-Schwarz-ish)
        assert aux.residual is not None and float(aux.residual) < 1e-5
    # overwritten, not appended, on a second forward
    run(layers, torch.randn(2, 8, 8))
    assert layers[0].last_aux is not auxes[0]
