"""DDP and FSDP on CPU: two ``torchrun`` processes (gloo) match one process with the same global
batch.

Each rank takes half of every global batch (``get_batch`` with identically seeded generators);
the single process sees the same rows as two accumulation micro-batches, so the per-micro-batch
balance loss is the same too, and DDP's gradient average equals the accumulated gradient. FSDP2
shards the parameters, gradients and optimizer state; the learnable 0-dim merge step η stays
replicated (FSDP2 cannot shard scalars) with its gradient averaged by the trainer.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nashmoe.train import load_checkpoint, read_metrics, train
from nashmoe.train.config import options_for_method

from .conftest import TINY_MODEL, tiny_config


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "strategy"),
    [("namex-full-mom", "ddp"), ("smoe", "ddp"), ("namex-full-mom", "fsdp")],
)
def test_two_processes_match_one(tmp_path, full_corpus, method, strategy):
    model = options_for_method(TINY_MODEL, method)  # smoe does not use segment_len
    sets = [x for k, v in model.items() for x in ("--set", f"{k}={v}")]
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "nashmoe.cli", "train", "--method", method, "--steps", "4", "--batch-size", "8",
        "--lr", "3e-3", "--log-interval", "1", "--eval-batch-size", "64", "--threads", "1",
        "--tensorboard", "off", "--no-progress", "--out", str(tmp_path / "ddp"),
        "--distributed", strategy, *sets,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = train(
        tiny_config(tmp_path / "one", method=method, steps=4, batch_size=8, grad_accum=2),
        corpus=full_corpus,
    )
    ddp, one = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert ddp["step"] == one["step"]
    assert ddp["train/loss"][:4] == pytest.approx(one["train/loss"][:4], rel=1e-6)
    assert ddp["train/aux_loss"][:4] == pytest.approx(one["train/aux_loss"][:4], rel=1e-5)
    assert ddp["validation/loss"][3] == pytest.approx(one["validation/loss"][3], rel=1e-7)
    assert ddp["test/loss"][4] == pytest.approx(single.test["loss"], rel=1e-7)
    a = load_checkpoint(tmp_path / "ddp").model_state()
    b = load_checkpoint(tmp_path / "one").model_state()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert load_checkpoint(tmp_path / "ddp").state["world_size"] == 2


def test_exit_worker_flushes_and_exits_only_in_a_multi_process_job():
    """exit_worker: in a torchrun job (WORLD_SIZE > 1) the process ends with the given code and
    its buffered output written; elsewhere it returns."""
    code = (
        "import sys; from nashmoe.train.distributed import exit_worker\n"
        "print('written', end=''); sys.stderr.write('err')\n"
        "exit_worker(3)\n"
        "print(' and returned', end='')\n"
    )
    for world, rc, out in (("2", 3, "written"), ("1", 0, "written and returned")):
        env = {**os.environ, "WORLD_SIZE": world}
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert (proc.returncode, proc.stdout, proc.stderr) == (rc, out, "err")
