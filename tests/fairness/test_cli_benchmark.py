"""``nashmoe fair`` (one run and --benchmark) and the benchmark's aggregation."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from nashmoe.cli import main
from nashmoe.fairness.benchmark import (
    aggregate,
    compare_two_stage,
    format_paired,
    format_table,
    paired_differences,
)


def _need_german() -> None:
    root = os.environ.get("NASHMOE_DATA")
    if not root or not (Path(root) / "fairness/german.data").exists():
        pytest.skip("fairness/german.data not found (set NASHMOE_DATA)")


@pytest.mark.filterwarnings("ignore::nashmoe.fairness.metrics.UndefinedMetricWarning")
def test_fair_single_run_writes_json(tmp_path, capsys) -> None:
    _need_german()
    rc = main(
        [
            "fair", "--dataset", "german", "--sensitive", "age", "--method", "nash-meta-gdro",
            "--epochs", "2", "--bargain-epochs", "1", "--out", str(tmp_path), "--seed", "1",
        ]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "selected epoch (validation roc_auc)" in out and "stage 1 (1 epochs)" in out
    data = json.loads((tmp_path / "german-age-nash-meta-gdro-seed1.json").read_text())
    assert data["config"]["method"] == "nash-meta-gdro" and len(data["history"]) == 2
    assert data["dataset"]["group_names"] == ["age>25", "age<=25"]


def test_fair_bad_sensitive_attribute(capsys) -> None:
    _need_german()
    assert main(["fair", "--dataset", "german", "--sensitive", "race"]) == 2
    assert "unknown sensitive attribute 'race' for german" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::nashmoe.fairness.metrics.UndefinedMetricWarning")
def test_fair_benchmark_mode_writes_table_and_plot(tmp_path, capsys) -> None:
    _need_german()
    pytest.importorskip("matplotlib")
    args = [
        "fair", "--benchmark", "--tasks", "german/age", "--methods", "ltr,nash-ltr",
        "--seeds", "0-1", "--epochs", "1", "--out", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| german/age | nash-ltr |" in table and "test-selected (reference protocol)" in table
    assert (tmp_path / "tradeoff.png").stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = next(r for r in summary["validation_selected"] if r["method"] == "nash-ltr")
    assert row["seeds"] == [0, 1] and row["roc_auc"][2] == 2
    assert len(list((tmp_path / "runs").rglob("*.json"))) == 4
    # Resume: a second call reuses every run file.
    assert main(args) == 0
    assert "4 runs reused, 0 to run" in capsys.readouterr().out


def _fake_run(task: str, method: str, seed: int, values: list[float], stage1: bool) -> dict:
    history = [
        {
            "epoch": e + 1,
            "val": {"roc_auc": v},
            "test": {"roc_auc": v, "balanced_accuracy": v, "balanced_accuracy_group_gap": 1 - v},
            "diagnostics": {"conflict_fraction": 0.5, "batches": 1},
        }
        for e, v in enumerate(values)
    ]
    best = max(range(len(values)), key=values.__getitem__)
    return {
        "task": task,
        "config": {"method": method, "seed": seed},
        "dataset": {"sizes": {"test": {"a": [1, 2], "b": [3, 4]}}},
        "history": history,
        "selected_epoch": best + 1,
        "selected": {"test": history[best]["test"]},
        "last": {"test": history[-1]["test"]},
        "stage1": {
            "bargain_success_rate": 1.0,
            "conflict_fraction": 0.0,
            "status_counts": {"ok": 3},
        }
        if stage1
        else {},
        "seconds": 1.0,
    }


def test_aggregate_protocols_and_comparison() -> None:
    runs = [
        _fake_run("t/s", "ltr", 0, [0.6, 0.8, 0.7], False),
        _fake_run("t/s", "ltr", 1, [0.6, 0.7, 0.9], False),
        _fake_run("t/s", "nash-ltr", 0, [0.9, 0.8, 0.7], True),
        _fake_run("t/s", "nash-ltr", 1, [0.7, 0.9, 0.8], True),
    ]
    metrics = ("roc_auc", "balanced_accuracy_group_gap")
    rows = aggregate(runs, metrics=metrics)
    ltr = next(r for r in rows if r["method"] == "ltr")
    assert ltr["roc_auc"][0] == pytest.approx(0.85) and ltr["roc_auc"][2] == 2
    assert ltr["roc_auc"][1] == pytest.approx(math.sqrt(0.005))  # sample std (ddof=1)
    assert ltr["epochs"] == [2, 3] and ltr["test_sizes"] == {"a": 3, "b": 7}
    nash = next(r for r in rows if r["method"] == "nash-ltr")
    assert nash["bargain_success_rate"][0] == 1.0 and nash["status_counts"] == {"ok": 6}
    ref = aggregate(runs, metrics=metrics, protocol="test_seed_mean")
    assert all(r["protocol"] == "test-selected (reference protocol)" for r in ref)
    assert next(r for r in ref if r["method"] == "ltr")["epochs"] == [3, 3]
    last = aggregate(runs, metrics=metrics, protocol="last")
    assert next(r for r in last if r["method"] == "ltr")["roc_auc"][0] == pytest.approx(0.8)
    comp = compare_two_stage(
        rows, performance=("roc_auc",), disparity=("balanced_accuracy_group_gap",)
    )
    assert comp[0]["method"] == "nash-ltr"
    assert comp[0]["roc_auc"] == pytest.approx(100 * (0.9 - 0.85) / 0.85)
    assert "| t/s | nash-ltr |" in format_table(rows, metrics=metrics)
    with pytest.raises(ValueError, match="protocol"):
        aggregate(runs, protocol="test")
    paired = paired_differences(runs, metrics=metrics)
    assert len(paired) == 1 and paired[0]["seeds"] == [0, 1]
    mean, _, n, better = paired[0]["roc_auc"]  # per seed: 0.9 − 0.8 and 0.9 − 0.9
    assert (mean, n, better) == (pytest.approx(0.05), 2, 1)
    mean_gap, _, _, better_gap = paired[0]["balanced_accuracy_group_gap"]  # lower is better
    assert mean_gap == pytest.approx(-0.05) and better_gap == 1
    assert "(1/2)" in format_paired(paired)
