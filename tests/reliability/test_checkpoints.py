"""Damaged checkpoints: every file is checked against its manifest, a damaged or incomplete latest
checkpoint falls back to the newest intact one (with a warning that names the damage), tensors
must be finite, and an older checkpoint is never pruned before the newer one is verified."""

from __future__ import annotations

import errno
import json
import os
import re

import pytest
import torch

from nashmoe.cli import main
from nashmoe.train import checkpoint as ckpt_mod
from nashmoe.train import load_checkpoint, read_metrics, train
from nashmoe.train.checkpoint import (
    MANIFEST,
    MODEL,
    OPTIMIZER,
    STATE,
    CheckpointError,
    CheckpointWarning,
    load_tensors,
    save_checkpoint,
    save_tensors,
)

from .conftest import rewrite_manifest, sha256, step_dirs, tiny_config


def test_zeros_in_the_model_file_fall_back_to_the_previous_checkpoint(two_checkpoints, capsys):
    run, _ = two_checkpoints
    model_file = run / "checkpoints" / "step-00000004" / MODEL
    with open(model_file, "r+b") as f:  # the probe's 64 KiB of zeros (inside the data)
        f.seek(1024)
        f.write(b"\0" * min(65536, model_file.stat().st_size - 2048))
    with pytest.warns(CheckpointWarning, match=r"step-00000004/model\.safetensors is damaged"):
        ck = load_checkpoint(run)
    assert ck.step == 2
    assert main(["eval", str(run), "--weights", "last", "--split", "validation"]) == 0
    captured = capsys.readouterr()
    assert "nashmoe eval: warning: skipped damaged checkpoint data" in captured.err
    assert "step-00000004/model.safetensors is damaged" in captured.err
    assert "last weights, step 2)" in captured.out


def test_random_bytes_then_resume_falls_back_and_continues_exactly(tmp_path, small_corpus):
    kw = dict(steps=6, ckpt_interval=2, method="namex-mom")
    reference = train(tiny_config(tmp_path / "a", **kw), corpus=small_corpus)

    def crash(step, metrics):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "b", **kw), corpus=small_corpus, on_step=crash)
    run = tmp_path / "b"
    assert step_dirs(run) == ["step-00000002", "step-00000004"]
    damaged = run / "checkpoints" / "step-00000004" / MODEL
    data = bytearray(damaged.read_bytes())
    data[-4096:] = os.urandom(4096)  # random bytes over the last tensors' data
    damaged.write_bytes(bytes(data))
    good = sha256(run / "checkpoints" / "step-00000002" / MODEL)

    with pytest.warns(CheckpointWarning, match=r"step-00000004/model\.safetensors is damaged"):
        resumed = train(tiny_config(run, **kw), corpus=small_corpus, resume=True)
    assert resumed.test == reference.test  # resumed from step 2: the same numbers, no NaN
    a, b = read_metrics(tmp_path / "a"), read_metrics(run)
    assert a["train/loss"] == b["train/loss"]
    assert all(v == v for v in b["train/loss"])
    # the good checkpoint was kept until the newer ones had been written and verified
    assert step_dirs(run) == ["step-00000004", "step-00000006"]
    assert good != sha256(run / "checkpoints" / "step-00000004" / MODEL)  # rewritten
    assert load_checkpoint(run).step == 6


@pytest.mark.parametrize("name", [MODEL, OPTIMIZER, STATE])
def test_a_truncated_file_falls_back_with_a_warning_naming_it(two_checkpoints, name):
    run, _ = two_checkpoints
    path = run / "checkpoints" / "step-00000004" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(CheckpointWarning, match=rf"step-00000004/{name}"):
        ck = load_checkpoint(run, need_optimizer=True)
    assert ck.step == 2 and ck.optimizer_state() is not None


def test_an_explicit_damaged_checkpoint_is_an_error_not_a_substitute(two_checkpoints):
    run, _ = two_checkpoints
    ckpt = run / "checkpoints" / "step-00000004"
    (ckpt / MODEL).write_bytes((ckpt / MODEL).read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"step-00000004/model\.safetensors is damaged"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_tensors(ckpt / MODEL)  # without a checksum: safetensors' own error, named


def test_a_missing_optimizer_is_an_error_unless_allowed(tmp_path, small_corpus, capsys):
    config = tiny_config(
        tmp_path / "run", steps=4, ckpt_interval=2, method="dense", keep_checkpoints=1
    )

    def stop(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, corpus=small_corpus, on_step=stop)
    run = tmp_path / "run"
    assert step_dirs(run) == ["step-00000002"]
    (run / "checkpoints" / "step-00000002" / OPTIMIZER).unlink()
    with pytest.raises(
        CheckpointError, match=r"optimizer\.safetensors is missing.*--allow-missing"
    ):
        train(config, corpus=small_corpus, resume=True)
    assert step_dirs(run) == ["step-00000002"]  # nothing touched
    with pytest.warns(CheckpointWarning, match="without its optimizer state"):
        result = train(config, corpus=small_corpus, resume=True, allow_missing_optimizer=True)
    assert result.best_step == 4


def test_a_missing_optimizer_falls_back_to_an_older_complete_checkpoint(two_checkpoints):
    run, _ = two_checkpoints
    (run / "checkpoints" / "step-00000004" / OPTIMIZER).unlink()
    assert load_checkpoint(run).step == 4  # evaluation does not need the optimizer
    with pytest.warns(CheckpointWarning, match=r"step-00000004/optimizer\.safetensors is missing"):
        assert load_checkpoint(run, need_optimizer=True).step == 2


def test_cli_resume_without_optimizer_names_the_option(two_checkpoints, capsys):
    run, _ = two_checkpoints
    for step in ("step-00000002", "step-00000004"):
        (run / "checkpoints" / step / OPTIMIZER).unlink()
    from .conftest import QUICK_DENSE

    argv = ["train", "--method", "dense", "--out", str(run), "--resume", *QUICK_DENSE]
    argv[argv.index("--steps") + 1] = "6"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nashmoe train: error: no intact checkpoint")
    assert "optimizer.safetensors is missing" in err and "--allow-missing-optimizer" in err


@pytest.mark.parametrize("which", ["latest.json", "state.json", "manifest.json"])
def test_corrupt_json_is_named(two_checkpoints, which):
    run, _ = two_checkpoints
    root = run / "checkpoints"
    path = root / which if which == "latest.json" else root / "step-00000004" / which
    path.write_text("")
    with pytest.warns(CheckpointWarning, match=re.escape(f"{path} is not valid JSON")):
        ck = load_checkpoint(run)
    # a damaged pointer: the newest intact step directory is used; a damaged state or
    # manifest: the older checkpoint
    assert ck.step == (4 if which == "latest.json" else 2)


def test_corrupt_state_of_the_only_checkpoint_is_a_one_line_error(two_checkpoints, capsys):
    run, _ = two_checkpoints
    for step in ("step-00000002", "step-00000004"):
        (run / "checkpoints" / step / STATE).write_text("{not json")
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nashmoe eval: error: no intact checkpoint")
    assert f"{run}/checkpoints/step-00000004/state.json is not valid JSON" in err
    assert len(err.strip().splitlines()) == 1


def test_non_finite_tensors_are_never_written(tmp_path):
    state = {"w": torch.ones(3), "b": torch.tensor([1.0, float("nan")])}
    with pytest.raises(CheckpointError, match=r"step-00000001: model state: tensor 'b'"):
        save_checkpoint(tmp_path, 1, model_state=state, optimizer_state=None, state={})
    assert not list(tmp_path.iterdir())


def test_eval_of_non_finite_weights_is_an_error(two_checkpoints, capsys):
    run, _ = two_checkpoints
    ckpt = run / "checkpoints" / "step-00000004"
    for name in (MODEL, "best_model.safetensors"):
        tensors = load_tensors(ckpt / name)
        tensors["lm_head.weight"] = tensors["lm_head.weight"].clone()
        tensors["lm_head.weight"][0, 0] = float("nan")
        tensors["wte.weight"] = tensors["lm_head.weight"]
        save_tensors(ckpt / name, tensors)
        rewrite_manifest(ckpt, name)  # as an older nashmoe (no finiteness check) left it
    assert main(["eval", str(run), "--split", "validation"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nashmoe eval: error: ")
    assert re.search(r"best_model\.safetensors: tensor '(lm_head|wte)\.weight' holds NaN", err)


def test_a_failed_read_back_keeps_the_pointer_and_the_older_checkpoints(tmp_path, monkeypatch):
    state = {"w": torch.ones(4)}
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model_state=state, optimizer_state=None, state={})
    real = ckpt_mod.verify_checkpoint

    def bad_read_back(path, **kw):
        if path.name == "step-00000003":
            return [f"{path / MODEL} is damaged: its SHA-256 differs from the manifest's"]
        return real(path, **kw)

    monkeypatch.setattr(ckpt_mod, "verify_checkpoint", bad_read_back)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*step-00000003: read-back"):
        save_checkpoint(tmp_path, 3, model_state=state, optimizer_state=None, state={}, keep=1)
    monkeypatch.undo()
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 2
    assert {"step-00000001", "step-00000002"} <= {p.name for p in tmp_path.iterdir()}
    assert load_checkpoint(tmp_path).step == 2


def test_disk_full_while_writing_keeps_latest_intact(tmp_path, monkeypatch):
    state = {"w": torch.ones(4)}
    save_checkpoint(tmp_path, 1, model_state=state, optimizer_state=None, state={})
    real = ckpt_mod.save_tensors

    def full(path, tensors, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\0" * 10)  # what fitted
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_mod, "save_tensors", full)
    with pytest.raises(
        OSError, match=r"cannot write checkpoint .*step-00000002: No space left"
    ) as e:
        save_checkpoint(tmp_path, 2, model_state=state, optimizer_state=None, state={})
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(ckpt_mod, "save_tensors", real)
    assert load_checkpoint(tmp_path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step-00000001"]


def test_legacy_checkpoints_without_manifest_load_with_a_warning(two_checkpoints):
    run, _ = two_checkpoints
    for step in step_dirs(run):  # as an older nashmoe wrote them: no manifest, no format key
        (run / "checkpoints" / step / MANIFEST).unlink()
        state = json.loads((run / "checkpoints" / step / STATE).read_text())
        del state[ckpt_mod.FORMAT_KEY]
        (run / "checkpoints" / step / STATE).write_text(json.dumps(state))
    with pytest.warns(CheckpointWarning, match="has no manifest.json"):
        ck = load_checkpoint(run, need_optimizer=True)
    assert ck.step == 4 and ck.optimizer_state() is not None


def test_pruning_after_a_fallback_keeps_older_and_drops_the_abandoned_newer(tmp_path):
    state = {"w": torch.ones(2)}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model_state=state, optimizer_state=None, state={}, keep=3)
    # a run that fell back to step 1 (step 2 and 3 damaged) writes step 2 again
    save_checkpoint(tmp_path, 2, model_state=state, optimizer_state=None, state={}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000001", "step-00000002"]
    assert load_checkpoint(tmp_path).step == 2
