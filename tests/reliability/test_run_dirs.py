"""Run directories: no silent overwrite of an earlier run, no silent fresh start on --resume, one
process per run directory (a lock, stale locks taken over), clean-up of only one's own
temporary files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from nashmoe.cli import main
from nashmoe.train import compare, load_checkpoint, save_checkpoint, train
from nashmoe.train._process import hostname
from nashmoe.train.rundir import LOCK, RunDirError, RunLock

from .conftest import QUICK, QUICK_DENSE, sha256, step_dirs, tiny_config


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_new_run_over_an_existing_one_is_an_error(two_checkpoints, small_corpus, capsys):
    run, config = two_checkpoints
    before = {p: sha256(p) for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match=r"already holds a run; pass --resume .* --overwrite"):
        train(config, corpus=small_corpus)
    assert main(["train", "--method", "dense", "--out", str(run), *QUICK_DENSE]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nashmoe train: error: --out {run} already holds a run")
    assert {p: sha256(p) for p in run.rglob("*") if p.is_file()} == before  # untouched


def test_overwrite_replaces_the_earlier_run(two_checkpoints, small_corpus):
    run, config = two_checkpoints
    (run / "checkpoints" / "step-00000099").mkdir()  # a later step of the old run
    result = train(config.replace(ckpt_interval=None, steps=3), corpus=small_corpus, overwrite=True)
    assert result.best_step == 3
    assert step_dirs(run) == ["step-00000003"]
    assert load_checkpoint(run).step == 3
    assert not (run / LOCK).exists()


def test_resume_with_nothing_to_resume_is_an_error(tmp_path, small_corpus, capsys):
    with pytest.raises(RunDirError, match="nothing to resume"):
        train(tiny_config(tmp_path / "new", steps=2), corpus=small_corpus, resume=True)
    assert main(["train", "--out", str(tmp_path / "cli"), "--resume", *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nashmoe train: error: --resume: nothing to resume in {tmp_path}")
    assert not (tmp_path / "cli").exists()  # nothing created


def test_a_live_lock_keeps_a_second_process_out(tmp_path, small_corpus):
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": hostname()}))
        with pytest.raises(RunDirError, match=rf"in use by process {sleeper.pid}"):
            train(tiny_config(run, steps=1), corpus=small_corpus)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert json.loads((run / LOCK).read_text())["pid"] == sleeper.pid  # not removed by the loser


def test_a_lock_of_another_host_is_respected(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(RunDirError, match=r"locked by process 1 on host 'elsewhere\.example'"):
        RunLock(tmp_path).acquire()


@pytest.mark.parametrize("content", ["pid", "garbage"])
def test_a_stale_lock_is_taken_over(tmp_path, small_corpus, content, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    if content == "pid":
        (run / LOCK).write_text(json.dumps({"pid": _dead_pid(), "host": hostname()}))
    else:  # a crash while the lock was written, long ago
        (run / LOCK).write_text("{")
        os.utime(run / LOCK, (time.time() - 60, time.time() - 60))
    result = train(tiny_config(run, steps=1), corpus=small_corpus)
    assert result.best_step == 1
    assert not (run / LOCK).exists()  # released at the end


def test_two_trainings_on_one_out_at_once(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--method", "dense", "--out", str(run), *QUICK_DENSE]
    argv[argv.index("--steps") + 1] = "40"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "nashmoe.cli", *argv, "--ckpt-interval", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / LOCK).exists():
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first training never took the lock"
            time.sleep(0.02)
        # the second one (with --overwrite, which would delete the first one's files)
        assert main([*argv, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nashmoe train: error: ")
        assert f"in use by process {first.pid}" in err
    finally:
        rc = first.wait(timeout=240)
        stderr = first.stderr.read().decode()
        first.stderr.close()
    assert rc == 0, stderr[-2000:]
    assert load_checkpoint(run, need_optimizer=True).step == 40
    assert not (run / LOCK).exists()


def test_clean_up_removes_only_own_and_dead_temporary_directories(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".tmp-step-00000005-{sleeper.pid}"
        dead = tmp_path / f".tmp-step-00000004-{_dead_pid()}"
        own = tmp_path / f".tmp-step-00000003-{os.getpid()}"
        for d in (live, dead, own):
            d.mkdir()
            (d / "model.safetensors").write_bytes(b"partial")
        save_checkpoint(
            tmp_path, 1, model_state={"w": torch.ones(2)}, optimizer_state=None, state={}
        )
        assert live.exists() and (live / "model.safetensors").exists()  # another writer's
        assert not dead.exists() and not own.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_compare_refuses_an_out_with_runs_and_resumes_with_resume(tmp_path, small_corpus, capsys):
    import importlib

    compare_mod = importlib.import_module("nashmoe.train.compare")
    base = tiny_config(tmp_path / "unused", steps=2, eval_batch_size=256)
    out = tmp_path / "cmp"
    kw = dict(methods=["dense"], seeds=[0], out=out, plots=False, log=lambda m: None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare_mod, "_corpus_for", lambda config: small_corpus)
        first = compare(base, **kw)
        with pytest.raises(RunDirError, match=r"already holds run\(s\) dense-s0; pass --resume"):
            compare(base, **kw)
        again = compare(base, resume=True, **kw)
        assert again.runs[0]["test"] == first.runs[0]["test"]
        replaced = compare(base, overwrite=True, **kw)
        assert replaced.runs[0]["test"] == first.runs[0]["test"]  # same seed, same numbers
        # a run without its record (killed after its last checkpoint) is resumed, not refused
        (out / "runs" / "dense-s0" / "record.json").unlink()
        resumed = compare(base, resume=True, **kw)
    assert not resumed.runs[0].get("reused")
    assert resumed.runs[0]["test"] == first.runs[0]["test"]
