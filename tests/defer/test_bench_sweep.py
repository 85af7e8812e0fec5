"""benchmarks/bench_defer_sweep.py: sample std over seeds (ddof = 1), the model in the title and
file name, the shared --seeds and --no-plots."""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_defer_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("bench_defer_sweep", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(seed: int, acc: float) -> dict:
    test = {"classifier_all_acc": acc, "system_acc": acc, "coverage": 0.5}
    return {"loss": "ce", "num_experts": 2, "seed": seed, "test": test}


def test_summary_uses_the_sample_std(sweep):
    table = sweep.summarise([_run(0, 0.5), _run(1, 0.6), _run(2, 0.7)], ["ce"], [2])
    mean, std = table["ce/J=2"]["classifier_all_acc"]
    assert mean == pytest.approx(0.6) and std == pytest.approx(statistics.stdev([0.5, 0.6, 0.7]))


def test_arguments(sweep):
    args = sweep.parse_args(["--seeds", "2", "--no-plot"])
    assert args.seeds == [0, 1] and args.no_plots
    assert sweep.parse_args([]).seeds == [0, 1, 2]


def test_the_title_names_the_model(sweep, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    titles = []
    real = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(
        matplotlib.figure.Figure,
        "suptitle",
        lambda self, t, **kw: titles.append(t) or real(self, t, **kw),
    )
    table = sweep.summarise([_run(0, 0.5), _run(1, 0.6)], ["ce"], [2])
    sweep.plot(table, ["ce"], [2], tmp_path / "defer_sweep_cnn.png", model="cnn")
    assert "SmallCNN trained end to end" in titles[-1] and "frozen" not in titles[-1]
    assert "sample std (ddof = 1) over 2 seed(s)" in titles[-1]
