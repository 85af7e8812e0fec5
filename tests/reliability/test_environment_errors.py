"""Environment errors end in one line (``nashmoe <cmd>: error: ...``, exit status 2) that names the
path or option, checked before any work where possible: an unusable --out, a full disk, an
unavailable device, a bad batch size or --json path, broken data files."""

from __future__ import annotations

import errno
import importlib
import json
import os
from pathlib import Path

import pytest
import torch

from nashmoe.cli import main
from nashmoe.train import checkpoint as ckpt_mod
from nashmoe.train import load_checkpoint

from .conftest import QUICK, QUICK_DENSE

eval_cli = importlib.import_module("nashmoe.train.cli.eval")


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"nashmoe {command}: error: "), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("command", ["train", "compare"])
def test_out_is_a_file(tmp_path, capsys, command):
    target = tmp_path / "file"
    target.write_text("not a directory")
    assert main([command, "--out", str(target), *QUICK]) == 2
    assert f"--out {target} is a file, not a directory" in _one_line_error(capsys, command)


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--out", str(tmp_path / "file" / "run"), *QUICK]) == 2
    assert "a parent of it is a file" in _one_line_error(capsys, "train")


def test_out_on_a_read_only_file_system(tmp_path, capsys, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args, **kw):  # what a read-only mount answers to a new file
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", read_only)
    assert main(["train", "--out", str(tmp_path), *QUICK]) == 2
    err = _one_line_error(capsys, "train")
    assert f"--out {tmp_path} is not writable: Read-only file system" in err


def test_disk_full_while_checkpointing(tmp_path, capsys, monkeypatch):
    real = ckpt_mod.save_tensors

    def fills_up(path, tensors, metadata=None):
        if "step-00000004" in str(path):
            with open(path, "wb") as f:
                f.write(b"\0" * 64)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, tensors, metadata)

    monkeypatch.setattr(ckpt_mod, "save_tensors", fills_up)
    run = tmp_path / "run"
    assert main(["train", "--method", "dense", "--out", str(run), "--ckpt-interval", "2",
                 *QUICK_DENSE]) == 2  # fmt: skip
    err = _one_line_error(capsys, "train")
    assert "cannot write checkpoint" in err and "step-00000004" in err
    assert "No space left on device" in err
    pointer = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert pointer["step"] == 2
    assert load_checkpoint(run, need_optimizer=True).step == 2  # intact
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not (run / "run.lock").exists()


@pytest.mark.parametrize("command", ["train", "compare", "eval", "generate"])
@pytest.mark.parametrize("device", ["bogus", "cuda"])
def test_unavailable_device(tmp_path, capsys, command, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if command in ("eval", "generate"):
        argv = [command, str(tmp_path), "--device", device]
    else:
        argv = [command, "--out", str(tmp_path / "out"), *QUICK, "--device", device]
    assert main(argv) == 2
    err = _one_line_error(capsys, command)
    assert f"device {device!r}" in err
    assert not (tmp_path / "out").exists()  # checked before anything was written


def test_eval_batch_size_zero_is_rejected_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(tmp_path), "--batch-size", "0"])
    assert exc.value.code == 2
    assert "argument --batch-size: must be a positive integer, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["missing-dir/e.json", "a-dir"])
def test_eval_json_path_is_checked_before_evaluating(trained_run, tmp_path, capsys, monkeypatch,
                                                     where):  # fmt: skip
    (tmp_path / "a-dir").mkdir()

    def must_not_run(*args, **kw):
        raise AssertionError("evaluated although --json cannot be written")

    monkeypatch.setattr(eval_cli, "evaluate", must_not_run)
    target = tmp_path / where
    assert main(["eval", str(trained_run), "--json", str(target)]) == 2
    err = _one_line_error(capsys, "eval")
    assert f"--json {target}" in err


def _data_dir_with_shakespeare(tmp_path: Path, data_dir: Path) -> Path:
    root = tmp_path / "data"
    (root / "tinyshakespeare").mkdir(parents=True)
    (root / "tinyshakespeare" / "input.txt").symlink_to(data_dir / "tinyshakespeare" / "input.txt")
    return root


def test_brown_zip_is_a_directory(tmp_path, capsys):
    (tmp_path / "brown" / "brown.zip").mkdir(parents=True)
    assert main(["train", "--corpus", "brown", "--data-dir", str(tmp_path), "--out",
                 str(tmp_path / "run"), *QUICK]) == 2  # fmt: skip
    err = _one_line_error(capsys, "train")
    assert f"{tmp_path / 'brown' / 'brown.zip'}' is a directory, not a file" in err


def test_empty_gpt2_bpe_files(tmp_path, capsys, data_dir):
    root = _data_dir_with_shakespeare(tmp_path, data_dir)
    (root / "gpt2-bpe").mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        (root / "gpt2-bpe" / name).write_text("")
    assert main(["train", "--tokenizer", "gpt2", "--data-dir", str(root), "--out",
                 str(tmp_path / "run"), *QUICK]) == 2  # fmt: skip
    err = _one_line_error(capsys, "train")
    assert "GPT-2's BPE file" in err and "gpt2-bpe/encoder.json' is empty" in err


def test_broken_gpt2_bpe_files(tmp_path, capsys, data_dir):
    root = _data_dir_with_shakespeare(tmp_path, data_dir)
    (root / "gpt2-bpe").mkdir()
    (root / "gpt2-bpe" / "encoder.json").write_text("{not json")
    (root / "gpt2-bpe" / "vocab.bpe").write_text("#version: 0.2\n")
    assert main(["train", "--tokenizer", "gpt2", "--data-dir", str(root), "--out",
                 str(tmp_path / "run"), *QUICK]) == 2  # fmt: skip
    err = _one_line_error(capsys, "train")
    assert "GPT-2's BPE files" in err and "cannot be read" in err
