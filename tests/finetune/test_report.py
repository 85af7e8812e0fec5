"""Summaries and paired differences of the fine-tuning experiment, on hand-made runs."""

from __future__ import annotations

import math

import pytest

from nashmoe.finetune.report import format_table, paired_difference, summarize


def _run(method: str, seed: int, test: float, dev: float = 0.5) -> dict:
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": test,
        "dev_accuracy": dev,
        "selected_epoch": 1,
        "parameters": {"total": 2_000_000, "active": 1_000_000},
        "seconds": 10.0,
        "train_sentences_per_s": 100.0,
    }


RUNS = [
    *(_run("namex", s, a) for s, a in zip((0, 1, 2), (0.90, 0.80, 0.85))),
    *(_run("smoe", s, a) for s, a in zip((0, 1, 2), (0.85, 0.80, 0.80))),
    _run("dense", 0, 0.70),
    _run("dense", 1, 0.75),
]


def test_paired_difference_by_hand() -> None:
    d = paired_difference(RUNS, "namex", "smoe")
    assert d["seeds"] == [0, 1, 2]
    assert d["diffs"] == pytest.approx([0.05, 0.0, 0.05])
    assert d["mean"] == pytest.approx(1 / 30)
    sd = math.sqrt(((1 / 60) ** 2 * 2 + (1 / 30) ** 2) / 2)
    assert d["std"] == pytest.approx(sd)
    half = 4.303 * sd / math.sqrt(3)  # t(0.975, 2 df), to the 3 decimals of the t table
    assert d["ci95"] == pytest.approx([1 / 30 - half, 1 / 30 + half], rel=1e-5)
    assert d["status"] == "within noise"


def test_paired_difference_pairs_only_shared_seeds_and_calls_a_clear_gap() -> None:
    runs = RUNS + [_run("camex", s, 0.5 + 0.001 * s) for s in (0, 1, 2)]
    d = paired_difference(runs, "dense", "smoe")
    assert d["seeds"] == [0, 1] and d["diffs"] == pytest.approx([-0.15, -0.05])
    gap = paired_difference(runs, "namex", "camex")
    assert gap["status"] == "higher" and gap["ci95"][0] > 0
    assert paired_difference(runs, "namex", "smear") is None
    one = paired_difference([_run("a", 0, 0.6), _run("b", 0, 0.5)], "a", "b")
    assert one["status"] == "too few seeds" and one["ci95"] is None


def test_summarize_orders_methods_once_and_formats() -> None:
    summary = summarize(RUNS)
    assert list(summary["methods"]) == ["dense", "smoe", "namex"]
    namex = summary["methods"]["namex"]["test_accuracy"]
    assert namex["mean"] == pytest.approx(0.85) and namex["std"] == pytest.approx(0.05)
    names = [(d["method"], d["reference"]) for d in summary["paired_differences"]]
    assert names == [("dense", "smoe"), ("namex", "smoe")]  # camex did not run
    table = format_table(summary)
    assert "| namex | 3 | 85.00 ± 5.00 |" in table
    assert "| namex − smoe | 3 | +5.00, +0.00, +5.00 | +3.33" in table
    assert "within noise" in table
