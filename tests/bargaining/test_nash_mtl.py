"""Tests for the NashMTL aggregator (TorchJD style: weights, reuse, clipping, state, repr)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nashmoe.bargaining import NashMTL, NashStatus, nash_bargaining

from . import _matrix_samplers as ms
from ._asserts import gram_of


def _matrices(count: int, t: int = 3, p: int = 7) -> list[torch.Tensor]:
    return [ms.well_conditioned(t, p=p, seed=100 + i) for i in range(count)]


def test_weights_and_gradient() -> None:
    g = ms.rank_deficient(4, rank=3, seed=1)
    out = NashMTL()(g)
    expected = nash_bargaining(gram_of(g)).alpha
    torch.testing.assert_close(out.weights, expected)
    torch.testing.assert_close(out.gradient, expected @ g)
    assert out.solution is not None and int(out.solution.status) == NashStatus.OK
    assert not out.fallback
    # Non-conflicting: every task's loss decreases along the aggregated gradient.
    assert bool((g @ out.gradient > 0).all())
    torch.testing.assert_close(out.gradient.norm(), torch.tensor(2.0, dtype=g.dtype))  # √T


def test_gramian_path_matches_forward() -> None:
    g = ms.well_conditioned(3, seed=2)
    weights, solution, failed = NashMTL().weights_from_gram(gram_of(g))
    torch.testing.assert_close(weights, NashMTL()(g).weights)
    assert solution is not None and not failed


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e3])
def test_direction_norm_is_sqrt_t_whatever_the_scale(scale: float) -> None:
    g = ms.scaled(5, seed=3) * scale
    out = NashMTL()(g)
    torch.testing.assert_close(out.gradient.norm(), torch.tensor(math.sqrt(5), dtype=g.dtype))
    torch.testing.assert_close(out.weights * scale, NashMTL()(g / scale).weights)


@pytest.mark.parametrize(("max_norm", "expected"), [(1.0, 1.0), (0.25, 0.25), (10.0, 2.0)])
def test_max_norm_clips_the_sqrt_t_direction(max_norm: float, expected: float) -> None:
    g = ms.well_conditioned(4, seed=4) * 1e3
    out = NashMTL(max_norm=max_norm, tol=1e-12)(g)
    assert math.isclose(float(out.gradient.norm()), expected, rel_tol=1e-9)
    unclipped = NashMTL(tol=1e-12)(g).gradient
    torch.testing.assert_close(out.gradient, unclipped * (expected / 2.0))


def test_update_weights_every_reuses_alpha() -> None:
    agg = NashMTL(update_weights_every=3)
    mats = _matrices(5)
    outs = [agg(m) for m in mats]
    assert [o.solution is not None for o in outs] == [True, False, False, True, False]
    torch.testing.assert_close(outs[1].weights, outs[0].weights)
    torch.testing.assert_close(outs[2].weights, outs[0].weights)
    torch.testing.assert_close(outs[1].gradient, outs[0].weights @ mats[1])
    torch.testing.assert_close(outs[3].weights, nash_bargaining(gram_of(mats[3])).alpha)
    torch.testing.assert_close(outs[4].weights, outs[3].weights)
    assert int(agg.step) == 5


def test_warm_start_across_calls() -> None:
    g = ms.rank_deficient(8, rank=4, seed=5)
    warm = NashMTL(tol=1e-10)
    first = warm(g).solution
    second = warm(g).solution
    assert first is not None and second is not None
    assert int(second.iterations) <= 1 < int(first.iterations)
    cold = NashMTL(tol=1e-10, warm_start=False)
    cold(g)
    again = cold(g).solution
    assert again is not None and int(again.iterations) == int(first.iterations)
    # A slightly different next step starts close to its answer.
    moved = warm(g + 1e-3 * ms.rank_deficient(8, rank=4, seed=6)).solution
    assert moved is not None and int(moved.iterations) < int(first.iterations)


@pytest.mark.parametrize("bad", [ms.opposing(7, seed=7), ms.with_zero_row(2, seed=7)[:, :7]])
def test_fallback_last_is_counted(bad: torch.Tensor) -> None:
    agg = NashMTL()
    good = agg(ms.well_conditioned(2, p=7, seed=8))
    out = agg(bad)
    assert out.fallback and out.solution is not None
    assert int(out.solution.status) in (NashStatus.INFEASIBLE, NashStatus.DEGENERATE)
    torch.testing.assert_close(out.weights, good.weights)
    torch.testing.assert_close(out.gradient, good.weights @ bad)
    assert int(agg.num_fallbacks) == 1
    torch.testing.assert_close(agg.alpha, good.weights)  # the failure did not overwrite α


def test_fallback_uniform_and_first_call() -> None:
    bad = ms.opposing(7, seed=9)
    agg = NashMTL(fallback="last")
    out = agg(bad)  # no previous α yet: uniform
    torch.testing.assert_close(out.weights, torch.full((2,), 0.5, dtype=bad.dtype))
    uni = NashMTL(fallback="uniform")
    uni(ms.well_conditioned(2, p=7, seed=10))
    out = uni(bad)
    torch.testing.assert_close(out.weights, torch.full((2,), 0.5, dtype=bad.dtype))
    assert int(agg.num_fallbacks) == 1 and int(uni.num_fallbacks) == 1


def test_reset_reproducibility() -> None:
    agg = NashMTL(update_weights_every=2, max_norm=1.0)
    infeasible = ms.opposing(7, seed=11)[[0, 1, 0]]  # g, −g, g
    mats = [*_matrices(3), infeasible]
    first = [agg(m) for m in mats]
    assert int(agg.step) == 4
    agg.reset()
    assert int(agg.step) == 0 and int(agg.num_fallbacks) == 0 and agg.alpha.numel() == 0
    second = [agg(m) for m in mats]
    for a, b in zip(first, second):
        torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=0)
        torch.testing.assert_close(a.gradient, b.gradient, rtol=0, atol=0)
        assert a.fallback == b.fallback


def test_state_dict_round_trip() -> None:
    mats = _matrices(4, t=3)
    a = NashMTL(update_weights_every=3)
    for m in mats[:2]:
        a(m)
    b = NashMTL(update_weights_every=3)
    b.load_state_dict(a.state_dict())
    assert int(b.step) == 2 and torch.equal(b.alpha, a.alpha)
    for m in mats[2:]:
        out_a, out_b = a(m), b(m)
        torch.testing.assert_close(out_a.weights, out_b.weights, rtol=0, atol=0)
        assert (out_a.solution is None) == (out_b.solution is None)


def test_task_count_change_needs_reset() -> None:
    agg = NashMTL()
    agg(ms.well_conditioned(3, seed=12))
    with pytest.raises(ValueError, match="reset"):
        agg(ms.well_conditioned(4, seed=12))
    agg.reset()
    agg(ms.well_conditioned(4, seed=12))


def test_repr_shows_the_settings() -> None:
    text = repr(NashMTL(update_weights_every=4, max_norm=1.0, max_iter=12, tol=1e-8))
    for part in (
        "NashMTL(",
        "update_weights_every=4",
        "max_norm=1.0",
        "max_iter=12",
        "tol=1e-08",
        "warm_start=True",
        "fallback='last'",
    ):
        assert part in text, text


def test_outputs_are_constants_for_autograd() -> None:
    g = ms.well_conditioned(3, seed=13).requires_grad_(True)
    out = NashMTL()(g)
    assert not out.weights.requires_grad and not out.gradient.requires_grad


def test_float32_gradients() -> None:
    g = ms.well_conditioned(3, seed=14).float()
    out = NashMTL(max_norm=1.0)(g)
    assert out.weights.dtype == torch.float32 and out.gradient.dtype == torch.float32
    assert math.isclose(float(out.gradient.norm()), 1.0, rel_tol=1e-5)


def test_backward_writes_the_aggregated_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = model(x)
    losses = [y[:, 0].square().mean(), (y[:, 1] - 1).square().mean()]
    params = list(model.parameters())
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        rows.append(torch.cat([gr.reshape(-1) for gr in grads]))
    matrix = torch.stack(rows)
    expected = nash_bargaining(matrix @ matrix.T).alpha @ matrix

    agg = NashMTL()
    out = agg.backward(losses, model.parameters())
    got = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(out.gradient, expected)
    # .grad accumulates like autograd does.
    agg.backward([loss * 1.0 for loss in losses], params)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in params]), 2 * expected)


def test_backward_with_an_unused_parameter() -> None:
    used = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    unused = nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    losses = [used.square().sum(), (used - 3).square().sum()]
    NashMTL().backward(losses, [used, unused])
    assert unused.grad is not None and float(unused.grad.abs().max()) == 0.0
    assert used.grad is not None and bool(torch.isfinite(used.grad).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"update_weights_every": 0}, "update_weights_every"),
        ({"update_weights_every": 1.5}, "update_weights_every"),
        ({"max_norm": 0.0}, "max_norm"),
        ({"max_norm": -1.0}, "max_norm"),
        ({"fallback": "zero"}, "fallback"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_bad_settings_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NashMTL(**kwargs)


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        (torch.ones(3, dtype=torch.float64), r"\[T, P\]"),
        (torch.ones(2, 3, dtype=torch.int64), r"\[T, P\]"),
        (torch.tensor([[1.0, math.nan], [0.0, 1.0]]), "NaN or inf"),
    ],
)
def test_bad_matrix_raises_without_touching_state(matrix: torch.Tensor, match: str) -> None:
    agg = NashMTL()
    with pytest.raises(ValueError, match=match):
        agg(matrix)
    with pytest.raises(ValueError, match="square"):
        agg.weights_from_gram(torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="not symmetric"):
        agg.weights_from_gram(torch.tensor([[1.0, 0.9], [0.1, 1.0]], dtype=torch.float64))
    assert int(agg.step) == 0 and agg.alpha.numel() == 0


def test_backward_needs_parameters() -> None:
    with pytest.raises(ValueError, match="parameter"):
        NashMTL().backward([torch.tensor(1.0)], [])
