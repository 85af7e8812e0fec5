"""Per-block FSDP2 (every transformer block, then the root, ``reshard_after_forward``) on CPU
with two gloo processes gives the loss curve and the parameters of one process, for methods that
propagate the base expert from block to block (its gradient crosses block boundaries)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from . import _fsdp_blocks

WORKER = Path(__file__).with_name("_fsdp_blocks.py")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["namex-full-mom"])
def test_per_block_fsdp_matches_one_process(tmp_path, method):
    out = tmp_path / "fsdp.pt"
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(WORKER), method, str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(out, weights_only=True)
    losses, state = _fsdp_blocks.reference(method)
    assert result["losses"] == pytest.approx(losses, rel=1e-6)
    assert result["state"].keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(result["state"][key], value, rtol=0, atol=1e-6, msg=key)
