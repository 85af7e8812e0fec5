"""Verdicts that respect noise: no winner from fewer than 3 seeds; paired differences (the same
seed across methods) with 95 % t-intervals (ddof = 1), "within noise" when the interval holds 0;
plots with one colour per method."""

from __future__ import annotations

import math
import statistics

import pytest

from nashmoe.palette import COLORS, color
from nashmoe.train.report import (
    format_paired,
    paired_difference,
    paired_table,
    summarize,
    t_quantile_975,
    verdict,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _run(method: str, seed: int, ppl: float) -> dict:
    return {
        "method": method,
        "seed": seed,
        "validation": {"ppl": ppl, "loss": math.log(ppl)},
        "test": {"ppl": ppl, "loss": math.log(ppl)},
        "params": {"total": 1000, "active": 500 if method != "dense" else 300},
        "timing": {"tokens_per_s": 100.0 + seed, "step_time_s": 0.1},
        "nash": {"solves": 0, "fallbacks": 0, "not_converged": 0, "residual_max": None},
    }


def _runs(ppls: dict[str, list[float]]) -> list[dict]:
    return [_run(m, s, p) for m, vals in ppls.items() for s, p in enumerate(vals)]


def test_t_quantiles():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(4) == 2.776
    assert t_quantile_975(40) == pytest.approx(2.021, abs=2e-3)
    assert t_quantile_975(1000) == pytest.approx(1.962, abs=2e-3)


@pytest.mark.parametrize("seeds", [1, 2])
def test_no_winner_from_fewer_than_three_seeds(seeds):
    runs = _runs({"smoe": [10.0, 10.1][:seeds], "namex": [9.0, 9.1][:seeds]})
    text = verdict(summarize(runs, ["smoe", "namex"]), runs)
    assert text.startswith(f"No winner can be named from {seeds} seed(s)")
    assert "wins" not in text and "Lowest" not in text


def test_paired_difference_is_a_t_interval_over_seeds():
    runs = _runs({"smoe": [10.0, 11.0, 12.0, 13.0], "namex": [9.5, 10.7, 11.4, 12.9]})
    e = paired_difference(runs, "namex", "smoe")
    diffs = [-0.5, -0.3, -0.6, -0.1]
    assert e["diffs"] == pytest.approx(diffs) and e["seeds"] == [0, 1, 2, 3]
    sd = statistics.stdev(diffs)  # ddof = 1
    half = 3.182 * sd / 2
    assert e["mean"] == pytest.approx(-0.375) and e["std"] == pytest.approx(sd)
    assert e["ci95"] == pytest.approx([-0.375 - half, -0.375 + half])
    assert e["status"] == "lower"  # the seeds differ a lot, the pairs do not


def test_within_noise_when_the_interval_holds_zero():
    runs = _runs({"smoe": [10.0, 10.2, 9.9], "namex": [9.8, 10.4, 9.8], "camex": [11, 11.2, 11.1]})
    rows = summarize(runs, ["smoe", "namex", "camex"])
    text = verdict(rows, runs)
    assert "Lowest mean test perplexity: namex" in text
    assert "smoe +" in text and "(within noise)" in text
    assert "namex is not ahead of smoe beyond seed noise: no single winner" in text
    entries = paired_table(runs, ["smoe", "namex", "camex"])
    assert [(e["method"], e["reference"]) for e in entries] == [
        ("namex", "smoe"), ("camex", "smoe"), ("smoe", "camex"), ("namex", "camex"),
    ]  # fmt: skip
    assert "| namex − smoe | 3 |" in format_paired(entries)


def test_a_clear_winner_is_named_with_its_intervals():
    runs = _runs({"smoe": [10.0, 10.5, 9.8], "namex": [9.0, 9.6, 8.7]})
    text = verdict(summarize(runs, ["smoe", "namex"]), runs)
    assert "namex is ahead of every other method beyond seed noise" in text


def test_every_method_has_one_colour_everywhere():
    from nashmoe.moe import METHODS

    assert len({COLORS[m] for m in METHODS}) == len(METHODS)
    assert color("not-a-method") == color("not-a-method")  # stable, not positional


def test_compare_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from nashmoe.train.plots import plot_efficiency, plot_loss_curves, plot_paired

    runs = _runs({"smoe": [10.0, 10.2, 9.9], "namex": [9.8, 10.4, 9.8], "dense": [12, 12, 12]})
    rows = summarize(runs, ["dense", "smoe", "namex"])
    metrics = {"smoe": [{"step": list(range(30)), "train/loss": [3.0 - i / 30 for i in range(30)]}]}
    for path in (
        plot_paired(paired_table(runs, ["dense", "smoe", "namex"]), tmp_path / "paired.png"),
        plot_efficiency(rows, tmp_path / "efficiency.png"),
        plot_loss_curves(metrics, rows, tmp_path / "loss.png"),
    ):
        assert path.read_bytes()[:8] == PNG


def test_records_and_metrics_of_older_runs_are_still_read(tmp_path):
    """Runs written when the split was named "valid" (record.json, metrics.csv)."""
    pytest.importorskip("matplotlib")
    from nashmoe.train.plots import plot_loss_curves

    old = [{**r, "valid": r.pop("validation")} for r in _runs({"smoe": [10.0, 10.5, 9.8]})]
    rows = summarize(old, ["smoe"])
    assert rows[0]["validation_ppl"][0] == pytest.approx((10.0 + 10.5 + 9.8) / 3)
    metrics = {"smoe": [{"step": [1, 2], "train/loss": [3.0, 2.9], "val/loss": [None, 2.8]}]}
    assert plot_loss_curves(metrics, rows, tmp_path / "l.png").read_bytes()[:8] == PNG
