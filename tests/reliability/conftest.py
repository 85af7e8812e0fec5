"""Shared pieces of the fault-injection tests: the tiny shapes and corpus of tests/train, a
quick command line, and helpers that damage files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from nashmoe.cli import main
from nashmoe.train import train
from nashmoe.train.checkpoint import MANIFEST
from train.conftest import (  # noqa: F401  (fixtures re-exported for this folder)
    TINY_MODEL,
    _one_thread,
    full_corpus,
    small_corpus,
    tiny_config,
)

SETS = [x for k, v in TINY_MODEL.items() for x in ("--set", f"{k}={v}")]
#: dense and smoe do not use segment_len (passing it is an error)
SETS_DENSE = [x for k, v in TINY_MODEL.items() if k != "segment_len" for x in ("--set", f"{k}={v}")]
#: A very small `nashmoe train` / `compare` budget (a few seconds).
QUICK = ["--steps", "4", "--batch-size", "4", "--log-interval", "1", "--tensorboard", "off",
         "--no-progress", "--threads", "1", "--eval-batch-size", "256", *SETS]  # fmt: skip
QUICK_DENSE = [*QUICK[: -len(SETS)], *SETS_DENSE]


def step_dirs(run: Path) -> list[str]:
    """The names of the step checkpoints of a run directory, oldest first."""
    return sorted(p.name for p in (run / "checkpoints").glob("step-*"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite_manifest(ckpt: Path, name: str) -> None:
    """Record the current bytes of ``ckpt/name`` in the manifest (what a writer that does not
    check its tensors would have left)."""
    manifest = json.loads((ckpt / MANIFEST).read_text())
    data = (ckpt / name).read_bytes()
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def two_checkpoints(tmp_path, small_corpus):  # noqa: F811
    """A finished 4-step run with checkpoints at steps 2 and 4 (and its config)."""
    config = tiny_config(tmp_path / "run", steps=4, ckpt_interval=2, method="dense")
    train(config, corpus=small_corpus)
    run = Path(config.out_dir)
    assert step_dirs(run) == ["step-00000002", "step-00000004"]
    return run, config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny trained run (shared by the read-only tests of a module)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--method", "dense", "--out", str(run), *QUICK_DENSE]) == 0
    finally:
        torch.set_num_threads(before)
    return run
