"""``nashmoe vision`` end to end on a tiny budget, and its usage errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from nashmoe.cli import main

from ._shared import require_data

pytest.importorskip("scipy")
pytest.importorskip("PIL")

TINY = [
    "--epochs", "1", "--train-limit", "40", "--val-size", "20", "--test-limit", "10",
    "--corruptions", "gaussian_noise,contrast", "--depth", "3", "--d-model", "16",
    "--d-ff", "16", "--heads", "2", "--patch-size", "8", "--num-experts", "2",
    "--batch-size", "20", "--threads", "1", "--no-progress",
]  # fmt: skip


def test_cli_end_to_end(tmp_path, capsys) -> None:
    data = require_data("cifar10/train.npz").parents[1]
    require_data("cifar10/test.npz")
    out = tmp_path / "run"
    args = ["vision", "--method", "dense,smoe", "--method", "namex-full-mom", "--seeds", "2"]
    args += [*TINY, "--data-dir", str(data), "--cache-dir", str(tmp_path / "cache")]
    args += ["--out", str(out)]
    if importlib.util.find_spec("matplotlib") is None:
        args.append("--no-plot")
    threads = torch.get_num_threads()
    assert main(args) == 0
    assert torch.get_num_threads() == threads  # restored
    res = json.loads((out / "results.json").read_text())
    assert res["methods"] == ["dense", "smoe", "namex-full-mom"] and res["seeds"] == [0, 1]
    assert res["data"]["test_size"] == 10 and res["data"]["val_size"] == 20
    assert len(res["runs"]) == 6
    for run in res["runs"]:
        assert 0 <= run["clean_accuracy"] <= 1
        assert set(run["corruption_accuracy"]) == {"gaussian_noise", "contrast"}
        assert all(len(v) == 5 for v in run["corruption_accuracy"].values())
        grid = [a for v in run["corruption_accuracy"].values() for a in v]
        assert run["mean_corruption_accuracy"] == pytest.approx(sum(grid) / len(grid))
        assert run["selected_epoch"] == 1 and "val_accuracy" in run["history"][0]
    summary = res["summary"]
    dense = summary["methods"]["dense"]
    assert dense["clean_accuracy"]["n"] == 2 and dense["clean_accuracy"]["std"] is not None
    assert summary["ce_baseline"] == "dense"
    assert set(summary["paired_differences"]) == {"dense - smoe", "namex-full-mom - smoe"}
    pair = summary["paired_differences"]["namex-full-mom - smoe"]
    assert pair["seeds"] == [0, 1] and pair["clean_accuracy"]["n"] == 2
    assert (out / "results.md").read_text().startswith("| method |")
    assert len(list((out / "runs").glob("*.json"))) == 6
    assert (out / "accuracy_vs_severity.png").stat().st_size > 0
    assert "| namex-full-mom | 2 |" in capsys.readouterr().out
    # --resume reuses every finished run
    assert main([*args, "--resume"]) == 0
    assert "resuming: 6 finished run(s)" in capsys.readouterr().err
    again = json.loads((out / "results.json").read_text())
    assert again["summary"]["methods"] == summary["methods"]


def test_cli_parallel_jobs(tmp_path) -> None:
    data = require_data("cifar10/train.npz").parents[1]
    out = tmp_path / "jobs"
    args = ["vision", "--method", "camex", "--seeds", "0,5", *TINY, "--jobs", "2", "--no-plot"]
    args += ["--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in res["runs"]] == [0, 5] and res["jobs"] == 2
    assert res["summary"]["methods"]["camex"]["clean_accuracy"]["n"] == 2


def usage_error(args: list[str], capsys) -> str:
    try:
        code = main(["vision", *args])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("nashmoe vision: error:")
    return err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--method", "dense,moe"], "--method"),
        (["--seeds", "0"], "--seeds"),
        (["--severities", "1,6"], "--severities"),
        (["--corruptions", "rain"], "--corruptions"),
        (["--train-limit", "0"], "--train-limit"),
        (["--test-limit", "-5"], "--test-limit"),
        (["--epochs", "x"], "--epochs"),
        (["--jobs", "0"], "--jobs"),
    ],
)
def test_usage_errors(args, needle, capsys, tmp_path) -> None:
    assert needle in usage_error([*args, "--out", str(tmp_path)], capsys)


def test_missing_data_dir(tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere"
    err = usage_error(["--data-dir", str(missing), "--out", str(tmp_path / "o")], capsys)
    assert str(missing) in err
    err = usage_error(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert "cifar10/train.npz" in err


def test_help_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["vision", "--help"])
    text = capsys.readouterr().out
    assert "--test-limit" in text and "--jobs" in text and "(default: 10)" in text
