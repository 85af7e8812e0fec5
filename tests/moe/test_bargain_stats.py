"""The bargaining diagnostics against hand computations (float64), alone and inside the layers."""

from __future__ import annotations

import math

import pytest
import torch

from nashmoe.moe import MoEConfig, MoEFeedForward, set_bargaining_stats
from nashmoe.moe.bargain_stats import (
    BARGAIN_STATS,
    alpha_spread,
    cosine,
    mean_pairwise_cosine,
    propagation_stats,
)
from nashmoe.train.diagnostics import MoEMonitor, bargaining_summary

D = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=D)


def test_alpha_spread_by_hand():
    assert float(alpha_spread(t(0.5, 0.5, 0.5))) == 0.0
    # N α / Σα = 2·(1, 0.5)/1.5 = (4/3, 2/3): max |· − 1| = 1/3
    assert float(alpha_spread(t(1.0, 0.5))) == pytest.approx(1 / 3, abs=1e-15)


def test_cosines_by_hand():
    # vectors split over two tensors: (1, 0 | 0), (0, 1 | 0), (1, 1 | 0)
    vs = {"a": t([1.0, 0.0], [0.0, 1.0], [1.0, 1.0]), "b": t([0.0], [0.0], [0.0])}
    # pairs: 0, 1/√2, 1/√2
    assert float(mean_pairwise_cosine(vs)) == pytest.approx(math.sqrt(2) / 3, abs=1e-15)
    assert float(mean_pairwise_cosine({"a": t([2.0, 0.0], [0.0, 3.0])})) == pytest.approx(0.0)
    # a zero vector counts as cosine 0: pairs (1,0)-(0,0) = 0, (1,0)-(1,0) = 1, (0,0)-(1,0) = 0
    zero = {"a": t([1.0, 0.0], [0.0, 0.0], [1.0, 0.0])}
    assert float(mean_pairwise_cosine(zero)) == pytest.approx(1 / 3, abs=1e-15)
    assert float(cosine({"a": t(1.0, 1.0)}, {"a": t(1.0, 2.0)})) == pytest.approx(
        3 / math.sqrt(10), abs=1e-15
    )
    assert float(cosine({"a": t(0.0, 0.0)}, {"a": t(1.0, 2.0)})) == 0.0


def test_orthogonal_equal_norms():
    """Orthogonal τ of equal norms: α uniform, so spread 0 and the Nash direction is the mean's."""
    players = {"w": 2.0 * torch.eye(3, dtype=D)}
    alpha = t(0.5, 0.5, 0.5)  # K = 4 I: α = 1/2
    direction = {"w": alpha @ players["w"]}
    base = {"w": t(3.0, 4.0, 0.0)}
    s = propagation_stats(players, alpha, direction, direction, base, gamma=2.0)
    assert float(s["alpha_spread"]) == 0.0
    assert float(s["nash_vs_mean_cosine"]) == pytest.approx(1.0, abs=1e-15)
    assert float(s["tau_cosine"]) == pytest.approx(0.0, abs=1e-15)
    # ‖γ Σ α τ‖ / ‖E_m‖ = 2·√3 / 5
    assert float(s["step_rel_norm"]) == pytest.approx(2 * math.sqrt(3) / 5, abs=1e-15)


def test_orthogonal_unequal_norms():
    """τ_1 = (1, 0), τ_2 = (0, 2): α = (1, 1/2), Σ α τ = (1, 1), Σ τ = (1, 2)."""
    players = {"w": t([1.0, 0.0], [0.0, 2.0])}
    alpha = t(1.0, 0.5)
    direction = {"w": alpha @ players["w"]}
    s = propagation_stats(players, alpha, direction, direction, {"w": t(0.0, 5.0)}, gamma=0.5)
    assert float(s["alpha_spread"]) == pytest.approx(1 / 3, abs=1e-15)
    assert float(s["nash_vs_mean_cosine"]) == pytest.approx(3 / math.sqrt(10), abs=1e-15)
    assert float(s["tau_cosine"]) == pytest.approx(0.0, abs=1e-15)
    assert float(s["step_rel_norm"]) == pytest.approx(0.5 * math.sqrt(2) / 5, abs=1e-15)
    ep = propagation_stats(players, None, None, direction, {"w": t(0.0, 5.0)}, gamma=0.5)
    assert set(ep) == {"step_rel_norm", "tau_cosine"}


def _layer(method: str, **kw) -> MoEFeedForward:
    """One owning layer (not last in its chain) with E_m = c e_0 and τ_i = 2 e_{i+1} in w_in."""
    cfg = MoEConfig(
        method=method, d_model=4, d_ff=4, num_experts=3, segment_len=2, nash_tol=1e-14, **kw
    )
    layer = MoEFeedForward(cfg).double()
    with torch.no_grad():
        for name in layer.layout.names:
            getattr(layer, name).zero_()
            getattr(layer, "base_" + name).zero_()
        layer.base_w_in[0, 0] = 3.0
        for i in range(3):
            layer.w_in[i] = layer.base_w_in
            layer.w_in[i, 0, i + 1] = 2.0
    set_bargaining_stats(layer, True)
    return layer


@pytest.mark.parametrize("method", ["namex", "namex-full", "namex-mom"])
def test_layer_orthogonal_equal_norms(method):
    layer = _layer(method, gamma=0.5)
    _, aux = layer(torch.randn(2, 4, 4, dtype=D), return_aux=True)
    s = aux.bargaining
    assert float(s["alpha_spread"]) == pytest.approx(0.0, abs=1e-12)
    assert float(s["nash_vs_mean_cosine"]) == pytest.approx(1.0, abs=1e-12)
    assert float(s["tau_cosine"]) == pytest.approx(0.0, abs=1e-12)
    # ‖Σ α τ‖ = √N (αᵀKα = N), so the step is γ √3 / ‖E_m‖ = 0.5 √3 / 3
    assert float(s["step_rel_norm"]) == pytest.approx(0.5 * math.sqrt(3) / 3, rel=1e-10)


def test_ep_camex_nash_step_norm_matches_namex():
    """EP-CAMEx with step_norm="nash": the mean's direction with NAMEx's step length √N."""
    x = torch.randn(2, 4, 4, dtype=D)
    _, ep = _layer("ep-camex", gamma=0.5)(x, return_aux=True)
    _, ep_nash = _layer("ep-camex", gamma=0.5, step_norm="nash")(x, return_aux=True)
    _, nash = _layer("namex", gamma=0.5)(x, return_aux=True)
    # the plain mean of three orthogonal τ of norm 2 has norm 2/√3
    assert float(ep.bargaining["step_rel_norm"]) == pytest.approx(0.5 * 2 / math.sqrt(3) / 3)
    assert float(ep_nash.bargaining["step_rel_norm"]) == pytest.approx(
        float(nash.bargaining["step_rel_norm"]), rel=1e-10
    )
    assert "alpha_spread" not in ep.bargaining
    # EP-CAMEx merges the raw experts (no τ_i in its step): τ_i are formed for the diagnostics
    assert float(ep.bargaining["tau_cosine"]) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(
        ep_nash.state.base["w_in"], nash.state.base["w_in"], atol=1e-10, rtol=0
    )


def test_layer_unequal_norms_by_hand():
    """τ_1 = 1·e_1, τ_2 = 2·e_2, τ_3 = 2·e_3: α = (1, ½, ½), N α/Σα = (3/2, 3/4, 3/4)."""
    layer = _layer("namex")
    with torch.no_grad():
        layer.w_in[0, 0, 1] = 1.0
    _, aux = layer(torch.randn(1, 4, 4, dtype=D), return_aux=True)
    s = aux.bargaining
    assert float(s["alpha_spread"]) == pytest.approx(0.5, rel=1e-10)
    # Σ α τ = (1, 1, 1), Σ τ = (1, 2, 2): cos = 5 / (√3 · 3)
    assert float(s["nash_vs_mean_cosine"]) == pytest.approx(5 / (3 * math.sqrt(3)), rel=1e-10)


def test_monitor_interval_means_and_summary():
    layer = _layer("namex")
    monitor = MoEMonitor()
    x = torch.randn(1, 4, 4, dtype=D)
    _, aux = layer(x, return_aux=True)
    monitor.update([aux])
    with torch.no_grad():
        layer.w_in[0, 0, 1] = 1.0
    _, aux2 = layer(x, return_aux=True)
    monitor.update([aux2])
    snap = monitor.snapshot()
    assert snap["bargain/alpha_spread/l0"] == pytest.approx(0.25, rel=1e-9)  # mean of 0 and ½
    assert "bargain/alpha_spread/l0" not in monitor.snapshot()  # the interval was reset
    metrics = {
        "step": [1, 2, 3, 4],
        "bargain/alpha_spread/l0": [0.4, 0.3, 0.2, 0.1],
        "bargain/tau_cosine/l1": [None, 0.5, 0.5, 0.7],
    }
    summary = bargaining_summary(metrics)
    assert summary["alpha_spread"] == {"final": [0.1], "tail_mean": [0.1]}
    assert summary["tau_cosine"] == {"final": [None, 0.7], "tail_mean": [None, 0.7]}
    assert bargaining_summary(metrics, tail=0.5)["alpha_spread"]["tail_mean"] == [
        pytest.approx(0.15)
    ]
    assert bargaining_summary({"step": [1]}) == {}


def test_diagnostics_are_off_unless_asked_for():
    """Off by default (they cost passes over the domain vectors); set_bargaining_stats turns
    them on and off for every layer of a model."""
    layer = _layer("namex", gamma=0.5)
    set_bargaining_stats(layer, False)
    x = torch.randn(2, 4, 4, dtype=D)
    assert layer(x, return_aux=True)[1].bargaining is None
    model = torch.nn.Sequential(layer)
    set_bargaining_stats(model, True)
    assert layer.bargaining_stats is True
    assert set(layer(x, return_aux=True)[1].bargaining) == set(BARGAIN_STATS)
    assert MoEFeedForward(MoEConfig(method="namex", d_model=4, d_ff=4)).bargaining_stats is False


@pytest.mark.parametrize("merge_weights", ["nash", "product"])
def test_last_layer_of_a_merge_weights_chain_reports_no_step(merge_weights):
    """With merge_weights nash/product the last layer of its chain still solves for α (its
    merge line needs it) but skips the propagation step: no diagnostics of a step not taken."""
    layer = _layer("namex-full", gamma=0.5, merge_weights=merge_weights)
    x = torch.randn(2, 4, 4, dtype=D)
    assert layer(x, return_aux=True)[1].bargaining is not None  # not last: a step, its stats
    layer.last_in_chain = True
    _, aux = layer(x, return_aux=True)
    assert aux.alpha is not None and aux.state is None
    assert aux.bargaining is None
