"""The Nash-MTL toy example runs and does what it claims (few steps, no plot)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nash_mtl_toy.py"


@pytest.fixture(scope="module")
def toy():
    name = "nashmoe_examples_nash_mtl_toy"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def test_nash_improves_both_tasks_and_approaches_the_front(toy) -> None:
    start = (-0.5, 2.0)
    run = toy.run_toy("nash", start=start, steps=200, lr=0.1)
    assert run.path.shape == (201, 2) and bool(torch.isfinite(run.path).all())
    assert bool((run.final_losses < toy.losses(torch.tensor(start, dtype=torch.float64))).all())
    # Far from the front, every small step improves every task.
    early = toy.run_toy("nash", start=start, steps=30)
    per_step = torch.stack([toy.losses(x) for x in early.path])
    assert bool((per_step[1:] < per_step[:-1]).all())
    front = toy.pareto_front()
    start_x = torch.tensor(start, dtype=torch.float64)
    assert toy.distance_to_front(run.path[-1], front) < 0.1 * toy.distance_to_front(start_x, front)
    assert run.stationarity < 0.1 * toy.pareto_stationarity(start_x)


def test_mean_lands_at_the_minimiser_of_the_sum(toy) -> None:
    run = toy.run_toy("mean", start=(0.0, -2.0), steps=200)
    h = toy.A1 + toy.SCALE2 * toy.A2
    target = torch.linalg.solve(h, toy.A1 @ toy.A + toy.SCALE2 * toy.A2 @ toy.B)
    torch.testing.assert_close(run.path[-1], target, rtol=0, atol=1e-4)


def test_main_without_plot(toy, capsys: pytest.CaptureFixture[str]) -> None:
    assert toy.main(["--no-plot", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "nash" in out and "mean" in out


def test_bad_method(toy) -> None:
    with pytest.raises(ValueError, match="method"):
        toy.run_toy("sum", start=(0.0, 0.0), steps=1)
