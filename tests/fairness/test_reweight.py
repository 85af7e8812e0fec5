"""Per-batch weights: normalisation, stage-1 bargaining and the fallback of fairness.md §6."""

from __future__ import annotations

import pytest
import torch

from nashmoe.fairness.bargain import nash_bargain
from nashmoe.fairness.objectives import objective_value
from nashmoe.fairness.reweight import normalise_weights, reweight_step


def test_normalise_weights() -> None:
    h = torch.tensor([-3.0, 4.0, -4.0, 0.0])
    assert torch.allclose(normalise_weights(h, "l2"), torch.tensor([0.6, 0.0, 0.8, 0.0]))
    assert torch.allclose(normalise_weights(h, "sum"), torch.tensor([3 / 7, 0.0, 4 / 7, 0.0]))
    zero = normalise_weights(torch.tensor([1.0, 2.0]))
    assert torch.equal(zero, torch.zeros(2))  # w̃ = 0 stays 0
    with pytest.raises(ValueError, match="weight_norm"):
        normalise_weights(h, "max")


@pytest.mark.parametrize("objective", ["ltr", "forml", "meta-gdro"])
def test_forced_failure_falls_back_to_the_current_stage2_weights(objective: str) -> None:
    """Two players with g_2 = −g_1: bargaining is infeasible; the weights must be exactly the
    one-stage method's weights for this batch (not a previous batch's, not zero)."""
    gen = torch.Generator().manual_seed(0)
    jac = torch.randn(4, 10, generator=gen)  # ∂ℓ^val_v/∂ε_j for 4 meta examples
    val_losses = torch.tensor([0.3, 0.9, 0.5, 0.4])
    group_coef = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    lv = val_losses.clone().requires_grad_()
    (coef,) = torch.autograd.grad(objective_value(objective, lv, group_coef), lv)
    h_obj = coef @ jac
    g1 = torch.randn(10, generator=gen)
    players = torch.stack([g1, -g1])
    step = reweight_step(players, h_obj, bargain=True)
    assert step.bargain is not None and step.bargain.status == "infeasible"
    assert step.fallback and not step.used_nash
    assert torch.equal(step.weights, normalise_weights(h_obj, "l2"))
    assert torch.equal(step.hypergradient, h_obj)
    plain = reweight_step(players, h_obj, bargain=False)
    assert plain.bargain is None and torch.equal(plain.weights, step.weights)


def test_successful_bargain_uses_the_nash_direction_and_improves_every_player() -> None:
    gen = torch.Generator().manual_seed(1)
    players = torch.randn(4, 32, generator=gen, dtype=torch.float64) + 0.4
    h_obj = torch.randn(32, generator=gen, dtype=torch.float64)
    step = reweight_step(players, h_obj, bargain=True)
    assert step.used_nash and step.bargain.ok
    expected = step.bargain.alpha @ players
    assert torch.allclose(step.hypergradient, expected)
    assert torch.allclose(step.weights, normalise_weights(expected))
    assert not step.conflict and bool((step.utilities > 0).all())
    # Unclipped, the descent step −Δ* improves every player: ⟨g_i, −Δ*⟩ = −1/α_i < 0.
    assert torch.allclose(players @ -expected, -1 / step.bargain.alpha)
    assert step.clipped_improves_all == bool(((players @ step.weights) < 0).all())


def test_custom_bargainer_and_diagnostics() -> None:
    players = torch.tensor([[1.0, 0.0], [-1.0, 0.5]])
    h_obj = torch.tensor([1.0, -1.0])
    calls = []

    def spy(g: torch.Tensor):
        calls.append(g)
        return nash_bargain(g)

    step = reweight_step(players, h_obj, bargain=True, bargainer=spy)
    assert len(calls) == 1 and step.pairwise_conflict
    with pytest.raises(ValueError, match=r"G \[n, B\]"):
        reweight_step(players, h_obj[:1], bargain=False)
