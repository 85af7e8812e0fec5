"""A training process killed (SIGKILL) after a checkpoint resumes exactly: its loss curve and
weights equal those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nashmoe.cli import main
from nashmoe.train import load_checkpoint, read_metrics

from .conftest import TINY_MODEL

SETS = [x for k, v in TINY_MODEL.items() for x in ("--set", f"{k}={v}")]
ARGS = ["train", "--method", "namex-mom", "--steps", "120", "--batch-size", "4",
        "--log-interval", "5", "--ckpt-interval", "10", "--eval-batch-size", "128",
        "--tensorboard", "off", "--no-progress", "--threads", "1", *SETS]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_run_resumes_exactly(tmp_path, capsys):
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nashmoe.cli", *ARGS, "--out", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    pointer = run / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 240
    try:
        while not pointer.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    killed_at = json.loads(pointer.read_text())["step"]
    assert 10 <= killed_at < 120, "the process finished before it could be killed"
    assert not (run / "result.json").exists()

    assert main([*ARGS, "--out", str(run), "--resume"]) == 0
    assert main([*ARGS, "--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    a, b = read_metrics(tmp_path / "whole"), read_metrics(run)
    assert a["step"] == b["step"] and len(a["step"]) == 25  # 24 logged steps + the test row
    for key in ("train/loss", "train/aux_loss", "train/grad_norm", "validation/loss", "test/loss"):
        assert a[key] == b[key], key
    sa = load_checkpoint(tmp_path / "whole").model_state()
    sb = load_checkpoint(run).model_state()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    config = json.loads((run / "config.json").read_text())
    assert config["resumed_from_step"] == killed_at
