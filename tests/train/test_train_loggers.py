"""CSV metrics (growing columns, truncation on resume), TensorBoard, progress fallback."""

from __future__ import annotations

import io

import pytest

from nashmoe.train import CSVLogger, MetricsLogger, read_metrics
from nashmoe.train.progress import Progress, format_duration


def test_csv_grows_columns_and_reads_back(tmp_path):
    path = tmp_path / "metrics.csv"
    log = CSVLogger(path)
    log.log(1, {"train/loss": 2.5})
    log.log(2, {"train/loss": 2.25, "val/loss": 2.75})
    log.log(3, {"train/loss": 2.0})
    cols = read_metrics(path)
    assert cols["step"] == [1.0, 2.0, 3.0]
    assert cols["train/loss"] == [2.5, 2.25, 2.0]
    assert cols["val/loss"] == [None, 2.75, None]
    assert read_metrics(tmp_path) == cols  # a run directory works too


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.csv"
    log = CSVLogger(path)
    for s in range(1, 7):
        log.log(s, {"train/loss": float(s), **({"val/loss": 1.0} if s == 5 else {})})
    resumed = CSVLogger(path, resume_step=4)
    resumed.log(5, {"train/loss": 50.0})
    cols = read_metrics(path)
    assert cols["step"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert cols["train/loss"][-1] == 50.0
    assert "val/loss" in cols  # the header keeps earlier columns


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tensorboard_events_written(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLogger(tmp_path, tensorboard="on")
    log.log(1, {"train/loss": 1.0, "nash/residual/l0": float("nan")})
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "metrics.csv").exists()


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard="off", enabled=False)
    log.log(1, {"train/loss": 1.0})
    assert not list(tmp_path.iterdir())


def test_plain_progress_fallback():
    stream = io.StringIO()
    bar = Progress(10, desc="run", plain=True, stream=stream, min_interval=0.0)
    bar.update(5, loss=2.5, tok_s=12345.0)
    bar.update(10, loss=2.0)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "step 5/10" in lines[0] and "loss=2.5" in lines[0] and "eta" in lines[0]
    assert "step 10/10" in lines[1] and "loss=2" in lines[1]
    silent = io.StringIO()
    Progress(10, enabled=False, stream=silent).update(10, loss=1.0)
    assert silent.getvalue() == ""


def test_format_duration():
    assert format_duration(75) == "1:15"
    assert format_duration(3700) == "1:01:40"
