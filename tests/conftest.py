"""Shared test configuration.

The real data sets live in the shared data folder beside the repository (``../shared/data``) on
our machines and in CI; point ``NASHMOE_DATA`` at it unless the caller already did. Tests that need
a file skip with a clear reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
if "NASHMOE_DATA" not in os.environ and _DEFAULT_DATA.is_dir():
    os.environ["NASHMOE_DATA"] = str(_DEFAULT_DATA)

# Deterministic, comparable numerics in tests: no TF32 on GPUs, few threads on the 2-core CI.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def require_data(relative: str) -> Path:
    """Path of a data file, or skip the test when the data folder does not have it."""
    root = os.environ.get("NASHMOE_DATA")
    path = Path(root) / relative if root else None
    if path is None or not path.exists():
        pytest.skip(f"data file {relative!r} not found (set NASHMOE_DATA)")
    return path


@pytest.fixture
def data_dir() -> Path:
    root = os.environ.get("NASHMOE_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("NASHMOE_DATA is not set and ../shared/data is absent")
    return Path(root)
