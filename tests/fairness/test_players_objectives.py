"""Players via masks, validation losses and the stage-2 objectives."""

from __future__ import annotations

import pytest
import torch

from nashmoe.fairness.objectives import cvar_loss, objective_value, soft_f1_term, validation_losses
from nashmoe.fairness.players import build_players


def test_players_use_masks_in_any_order_and_any_cell_size() -> None:
    group = torch.tensor([1, 0, 1, 0, 0, 1, 1])
    y = torch.tensor([0, 1, 1, 1, 0, 0, 0])
    ps = build_players(group, y, ["a", "b"])
    assert ps.names == ("(a, y=0)", "(a, y=1)", "(b, y=0)", "(b, y=1)")
    losses = torch.arange(7, dtype=torch.float32)
    expected = [4.0, (1 + 3) / 2, (0 + 5 + 6) / 3, 2.0]  # naive per-cell means
    assert torch.allclose(ps.coefficients @ losses, torch.tensor(expected))
    assert torch.allclose(ps.group_coefficients @ losses, torch.tensor([8 / 3, 13 / 4]))
    by_group = build_players(group, y, ["a", "b"], mode="group")
    assert by_group.names == ("a", "b") and by_group.n_players == 2


def test_empty_cell_is_dropped_with_a_warning() -> None:
    group = torch.tensor([0, 0, 1])
    y = torch.tensor([0, 1, 0])
    with pytest.warns(UserWarning, match=r"\(b, y=1\)"):
        ps = build_players(group, y, ["a", "b"])
    assert ps.dropped == ("(b, y=1)",) and ps.n_players == 3 and ps.can_bargain


def test_empty_group_in_the_meta_set_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"\['c'\] have no example in the meta"):
        build_players(torch.tensor([0, 1]), torch.tensor([0, 1]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="players mode"):
        build_players(torch.tensor([0]), torch.tensor([0]), ["a"], mode="cells")
    with pytest.raises(ValueError, match="binary"):
        build_players(torch.tensor([0]), torch.tensor([2]), ["a"])


def test_soft_f1_term_against_a_naive_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    out = soft_f1_term(logits, y)
    for i in range(6):
        total = 0.0
        for c in range(2):
            p = torch.sigmoid(logits[i, c]).item()
            t = 1.0 if y[i] == c else 0.0
            tp, fp, fn = p * t, p * (1 - t), (1 - p) * t
            total += -2 * tp / (2 * tp + fn + fp)
        assert out[i].item() == pytest.approx(1 / (1 + torch.exp(torch.tensor(-total)).item()))
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(validation_losses(logits, y, "ce+soft_f1"), ce + out)
    assert torch.allclose(validation_losses(logits, y, "ce"), ce)


def test_objectives_and_their_active_groups() -> None:
    coef = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    lv = torch.tensor([1.0, 3.0, 0.5, 0.5], requires_grad=True)
    assert objective_value("ltr", lv, coef).item() == pytest.approx(1.25)
    assert objective_value("meta-gdro", lv, coef).item() == pytest.approx(2.0)
    forml = objective_value("forml", lv, coef)
    assert forml.item() == pytest.approx(1.5)
    (g,) = torch.autograd.grad(forml, lv)
    assert torch.allclose(g, torch.tensor([0.5, 0.5, -0.5, -0.5]))
    with pytest.raises(ValueError, match="objective"):
        objective_value("gdro", lv, coef)


def test_cvar_loss() -> None:
    losses = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3])
    assert cvar_loss(losses, 0.4).item() == pytest.approx(1.4)  # int(0.4·5) = 2 largest
    assert cvar_loss(losses, 0.01).item() == pytest.approx(0.9)  # at least one
    with pytest.raises(ValueError, match="cvar_fraction"):
        cvar_loss(losses, 1.5)
