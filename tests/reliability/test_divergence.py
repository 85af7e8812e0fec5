"""Divergence: a non-finite loss or gradient stops the run at that step, names what was non-finite
and keeps the last good checkpoint; compare records a diverged method and goes on."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

from nashmoe.cli import main
from nashmoe.train import compare, load_checkpoint, train
from nashmoe.train.divergence import TrainingDiverged

from .conftest import QUICK, QUICK_DENSE, step_dirs, tiny_config

compare_mod = importlib.import_module("nashmoe.train.compare")  # the package exports compare()

#: The probe's settings: a learning rate of 1000, no warm-up, no clipping.
WILD = {"lr": 1e3, "warmup": 0, "grad_clip": 0.0}


def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, small_corpus):
    config = tiny_config(tmp_path / "run", steps=20, ckpt_interval=1, method="namex", **WILD)
    with pytest.raises(TrainingDiverged) as info:
        train(config, corpus=small_corpus)
    err = info.value
    assert 2 <= err.step <= 20  # (step 3 with these settings and seed)
    assert str(err).startswith(f"training diverged at step {err.step}: non-finite ")
    assert "training loss" in err.what or "gradient norm" in err.what
    run = tmp_path / "run"
    assert not (run / "result.json").exists()
    # the checkpoint of the step before is intact, finite and kept
    assert err.checkpoint == run / "checkpoints" / f"step-{err.step - 1:08d}"
    assert f"the last good checkpoint, {err.checkpoint}, is kept" in str(err)
    ck = load_checkpoint(run, need_optimizer=True)
    assert ck.step == err.step - 1
    assert all(torch.isfinite(t).all() for t in ck.model_state().values())
    assert step_dirs(run)[-1] == err.checkpoint.name


def test_the_gradient_is_checked_with_clipping_on_too(tmp_path, small_corpus, monkeypatch):
    # an infinite gradient with a finite loss: clipping would turn it into NaN weights
    real = torch.nn.utils.clip_grad_norm_
    calls: list[int] = []

    def clip(params, max_norm, *args, **kw):
        params = list(params)
        calls.append(1)
        if len(calls) == 2:
            params[0].grad.fill_(math.inf)
        return real(params, max_norm, *args, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    config = tiny_config(tmp_path / "run", steps=3, ckpt_interval=1, method="dense", grad_clip=1.0)
    with pytest.raises(TrainingDiverged, match=r"at step 2: non-finite gradient norm \(inf\)"):
        train(config, corpus=small_corpus)
    ck = load_checkpoint(tmp_path / "run", need_optimizer=True)
    assert ck.step == 1 and all(torch.isfinite(t).all() for t in ck.model_state().values())


def test_cli_train_reports_divergence_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--method", "namex", "--out", str(run), *QUICK, "--lr", "1e3",
            "--warmup", "0", "--grad-clip", "0", "--ckpt-interval", "1"]  # fmt: skip
    argv[argv.index("--steps") + 1] = "20"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nashmoe train: error: training diverged at step ")
    assert "TypeError" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_compare_records_a_diverged_method_and_goes_on(tmp_path, small_corpus, monkeypatch):
    real_train = compare_mod.train

    def train_dense_wildly(config, **kw):  # only dense gets the probe's learning rate
        if config.method == "dense":
            config = config.replace(**WILD)
        return real_train(config, **kw)

    monkeypatch.setattr(compare_mod, "train", train_dense_wildly)
    monkeypatch.setattr(compare_mod, "_corpus_for", lambda config: small_corpus)
    base = tiny_config(tmp_path / "unused", steps=12, eval_batch_size=256)
    logged: list[str] = []
    result = compare(
        base,
        methods=["dense", "namex"],
        seeds=[0],
        out=tmp_path / "cmp",
        plots=False,
        log=logged.append,
    )
    assert [d["method"] for d in result.diverged] == ["dense"]
    assert [row["method"] for row in result.summary] == ["namex"]
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    (entry,) = results["diverged"]
    assert entry["method"] == "dense" and entry["seed"] == 0 and entry["step"] >= 1
    assert "non-finite" in entry["message"]
    runs = {r["method"]: r for r in results["runs"]}
    assert runs["dense"]["diverged"]["step"] == entry["step"] and "test" not in runs["dense"]
    assert math.isfinite(runs["namex"]["test"]["ppl"])
    md = (tmp_path / "cmp" / "results.md").read_text()
    assert f"dense seed 0 at step {entry['step']} (non-finite" in md
    assert "| namex |" in md and "| dense |" not in md
    assert any("dense seed 0: DIVERGED" in line for line in logged)


def test_cli_compare_writes_results_when_every_method_diverges(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "dense,namex", "--out", str(out), "--no-plots", *QUICK,
            "--lr", "1e3", "--warmup", "0", "--grad-clip", "0"]  # fmt: skip
    argv[argv.index("--steps") + 1] = "20"
    assert main(argv) == 1  # results written, but not every run finished
    captured = capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    assert [d["method"] for d in results["diverged"]] == ["dense", "namex"]
    assert results["summary"] == []
    assert "every run diverged" in (out / "results.md").read_text()
    assert "nashmoe compare: dense seed 0 diverged at step" in captured.err
    # --resume reuses the diverged records (the same settings diverge the same way)
    assert main([*argv, "--resume"]) == 1
    assert "DIVERGED" in capsys.readouterr().err


@pytest.mark.slow
def test_under_torchrun_every_rank_stops_and_a_locked_out_does_not_hang(tmp_path):
    """DDP: the divergence check and the run-directory checks reach every rank (no rank is left
    waiting in a collective)."""
    import os
    import subprocess
    import sys

    from nashmoe.train._process import hostname
    from nashmoe.train.rundir import LOCK

    run = tmp_path / "ddp"
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "nashmoe.cli", "train", "--method", "dense", "--out", str(run), *QUICK_DENSE,
            "--batch-size", "8"]  # fmt: skip
    base[base.index("--steps") + 1] = "20"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    wild = ["--lr", "1e3", "--warmup", "0", "--grad-clip", "0", "--ckpt-interval", "1"]
    proc = subprocess.run([*base, *wild], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode != 0
    assert proc.stderr.count("nashmoe train: error: training diverged at step ") == 2  # 2 ranks
    step = load_checkpoint(run, need_optimizer=True).step
    assert step >= 1 and f"step-{step:08d}, is kept" in proc.stderr
    assert not (run / LOCK).exists()

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": hostname()}))
        proc = subprocess.run([*base, "--overwrite"], capture_output=True, text=True, env=env,
                              timeout=240)  # fmt: skip
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode != 0
    assert proc.stderr.count(f"in use by process {sleeper.pid}") == 2, proc.stderr[-3000:]
    assert load_checkpoint(run, need_optimizer=True).step == step  # the old run untouched
