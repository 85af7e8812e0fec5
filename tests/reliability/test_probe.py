"""Cases found by probing the issue-17 fixes by hand: a damaged manifest (malformed entry, deleted
file), a truncated checkpoint of an older nashmoe (no manifest), a pointer file left by a killed
writer, devices torch knows but training does not support, ``compare --resume`` with nothing to
resume, the environment checks of ``fair``, ``defer`` and ``data``, and ``nash_direction`` on
vectors near the largest float."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from nashmoe._warnings import NashmoeWarning
from nashmoe.bargaining import nash_direction
from nashmoe.cli import main
from nashmoe.train import CSVLogger, compare, load_checkpoint, read_metrics
from nashmoe.train import checkpoint as ckpt_mod
from nashmoe.train._process import hostname
from nashmoe.train.checkpoint import (
    FORMAT_KEY,
    MANIFEST,
    MODEL,
    STATE,
    CheckpointWarning,
    save_checkpoint,
)
from nashmoe.train.distributed import resolve_device
from nashmoe.train.rundir import LOCK

from .conftest import QUICK_DENSE, tiny_config
from .test_run_dirs import _dead_pid


def test_a_malformed_manifest_entry_falls_back(two_checkpoints):
    run, _ = two_checkpoints
    manifest = run / "checkpoints" / "step-00000004" / MANIFEST
    data = json.loads(manifest.read_text())
    data["files"][MODEL] = 5  # an entry that is not {"bytes", "sha256"}
    manifest.write_text(json.dumps(data))
    with pytest.warns(CheckpointWarning, match=r"manifest\.json is malformed \(its entry for "):
        assert load_checkpoint(run).step == 2


def test_a_deleted_manifest_of_a_new_checkpoint_is_damage_not_a_legacy_checkpoint(
    two_checkpoints,
):
    run, _ = two_checkpoints
    ckpt = run / "checkpoints" / "step-00000004"
    assert FORMAT_KEY in json.loads((ckpt / STATE).read_text())
    (ckpt / MANIFEST).unlink()
    (ckpt / MODEL).write_bytes((ckpt / MODEL).read_bytes()[:1000])  # now unverifiable
    with pytest.warns(CheckpointWarning, match=r"step-00000004/manifest\.json is missing"):
        assert load_checkpoint(run).step == 2


def test_a_truncated_legacy_checkpoint_falls_back(two_checkpoints):
    run, _ = two_checkpoints
    for step in ("step-00000002", "step-00000004"):  # as an older nashmoe wrote them
        ckpt = run / "checkpoints" / step
        (ckpt / MANIFEST).unlink()
        state = json.loads((ckpt / STATE).read_text())
        del state[FORMAT_KEY]
        (ckpt / STATE).write_text(json.dumps(state))
    model = run / "checkpoints" / "step-00000004" / MODEL
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.warns(CheckpointWarning) as caught:
        ck = load_checkpoint(run)
    assert ck.step == 2
    assert any(
        "step-00000004/model.safetensors is not a readable safetensors file" in str(w.message)
        for w in caught
    )
    ck.model_state()  # the older one is intact


def test_a_pointer_file_of_a_killed_writer_is_cleaned_up(tmp_path):
    dead = tmp_path / f".latest.json.tmp-{_dead_pid()}"
    live = tmp_path / f".latest.json.tmp-{os.getppid()}"
    dead.write_text("{")
    live.write_text("{")
    save_checkpoint(tmp_path, 1, model_state={"w": torch.ones(2)}, optimizer_state=None, state={})
    assert not dead.exists() and live.exists()


def test_resume_warns_once_about_a_skipped_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--method", "dense", "--out", str(run), "--ckpt-interval", "2", *QUICK_DENSE]
    assert main(argv) == 0
    model = run / "checkpoints" / "step-00000004" / MODEL
    model.write_bytes(model.read_bytes()[:1000])
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipped damaged checkpoint data") == 1, err


@pytest.mark.parametrize("device", ["meta", "mps", "xla"])
def test_devices_training_does_not_support_are_one_line_errors(device, tmp_path, capsys):
    with pytest.raises(ValueError, match=rf"unsupported device '{device}'"):
        resolve_device(device)
    assert main(["eval", str(tmp_path), "--device", device]) == 2
    assert capsys.readouterr().err.startswith(f"nashmoe eval: error: unsupported device '{device}'")


def test_compare_resume_with_nothing_to_resume_is_an_error(tmp_path, capsys):
    out = tmp_path / "typo"
    argv = ["compare", "--methods", "dense", "--out", str(out), "--resume", "--no-plots"]
    assert main([*argv, *QUICK_DENSE]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nashmoe compare: error: --resume: nothing to resume in {out}")
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "bogus"], "unknown device 'bogus'"),
        (["--out", "{file}"], "is a file, not a directory"),
    ],
)
def test_fair_environment_errors_before_any_work(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("x")
    argv = [a.format(file=tmp_path / "file", dir=tmp_path / "out") for a in argv]
    assert main(["fair", *argv, "--data-dir", str(tmp_path / "nodata")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nashmoe fair: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_defer_out_is_checked_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = ["defer", "--out", str(tmp_path / "file"), "--data-dir", str(tmp_path / "nodata")]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(
        f"nashmoe defer: error: --out {tmp_path / 'file'} is a file"
    )


def test_data_json_into_a_directory_is_an_error(tmp_path, capsys):
    assert main(["data", "--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"nashmoe data: error: --json {tmp_path} is a directory\n"


def test_report_error_of_an_os_error_has_no_errno_prefix(capsys):
    from nashmoe.train.cli.common import report_error

    assert report_error("train", OSError(28, "cannot write checkpoint x: No space left")) == 2
    err = capsys.readouterr().err
    assert err == "nashmoe train: error: cannot write checkpoint x: No space left\n"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nash_direction_near_the_largest_float(dtype):
    g = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    g = (g / g.abs().max() * torch.finfo(dtype).max * 0.99).to(dtype)
    solution, direction = nash_direction(g)
    _, reference = nash_direction(g.double() / 1e300)
    assert int(solution.status.max()) == 0  # OK
    assert math.isclose(float(direction.double().norm()), 2.0, rel_tol=1e-2)
    torch.testing.assert_close(direction.double(), reference, atol=2e-2, rtol=2e-2)


def test_format_key_is_written(tmp_path):
    save_checkpoint(tmp_path, 1, model_state={"w": torch.ones(2)}, optimizer_state=None, state={})
    state = json.loads((tmp_path / "step-00000001" / STATE).read_text())
    assert state[FORMAT_KEY] == 1 and ckpt_mod.verify_checkpoint(tmp_path / "step-00000001") == []


def test_a_second_compare_on_the_same_out_is_refused(tmp_path, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": hostname()}))
        argv = ["compare", "--methods", "dense", "--out", str(out), "--no-plots", *QUICK_DENSE]
        for extra in ([], ["--overwrite"]):
            assert main([*argv, *extra]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"nashmoe compare: error: {out} is in use by process ")
            assert str(sleeper.pid) in err
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (out / "runs").exists()


def test_compare_resume_with_a_damaged_record_resumes_the_run(tmp_path, small_corpus):
    import importlib

    compare_mod = importlib.import_module("nashmoe.train.compare")
    base = tiny_config(tmp_path / "unused", steps=2, eval_batch_size=256)
    out = tmp_path / "cmp"
    kw = dict(methods=["dense"], seeds=[0], out=out, plots=False, log=lambda m: None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare_mod, "_corpus_for", lambda config: small_corpus)
        first = compare(base, **kw)
        (out / "runs" / "dense-s0" / "record.json").write_text("{")
        with pytest.warns(CheckpointWarning, match=r"record\.json is not valid JSON"):
            again = compare(base, resume=True, **kw)
    assert not again.runs[0].get("reused")
    assert again.runs[0]["test"] == first.runs[0]["test"]
    assert not (out / LOCK).exists()


def test_a_damaged_metrics_log_is_kept_aside_on_resume(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.warns(NashmoeWarning, match=r"metrics\.csv is damaged .* kept as .*\.damaged"):
        log = CSVLogger(path, resume_step=10)
    log.log(11, {"loss": 1.0})
    assert read_metrics(path)["step"] == [11.0]
    assert (tmp_path / "metrics.csv.damaged").read_bytes() == b"\xff\xfe garbage"


@pytest.mark.parametrize(
    "argv", [["train", "--method", "dense", "--overwrite"], ["compare", "--methods", "dense"]]
)
def test_an_empty_out_is_an_error(argv, capsys):
    assert main([*argv, "--out", "", *QUICK_DENSE]) == 2
    assert capsys.readouterr().err.startswith(f"nashmoe {argv[0]}: error: --out is empty")
