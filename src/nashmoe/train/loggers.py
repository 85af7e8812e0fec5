"""Metric logs under ``runs/<name>/``: a dependency-free CSV, plus TensorBoard when installed.

- :class:`CSVLogger` writes ``metrics.csv``, one row per logged step; columns are added as new
  metrics appear (the file is rewritten with the wider header, which happens a few times per
  run). On resume it drops the rows after the checkpoint's step, so the file of a resumed run
  equals the file of an uninterrupted one.
- :class:`TensorBoardLogger` writes event files through ``torch.utils.tensorboard`` (imported
  lazily; ``pip install 'nashmoe[tensorboard]'``).
- :func:`read_metrics` reads ``metrics.csv`` back as ``{column: [values]}`` (floats, None for
  empty cells).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

from nashmoe._optional import require
from nashmoe._warnings import NashmoeWarning

__all__ = ["CSVLogger", "MetricsLogger", "TensorBoardLogger", "read_metrics"]


def _fmt(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class CSVLogger:
    """``metrics.csv`` with a ``step`` column and one column per metric."""

    def __init__(self, path: str | os.PathLike[str], *, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.columns: list[str] = ["step"]
        self.rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.exists():
            try:
                with open(self.path, newline="", encoding="utf-8") as f:
                    reader = csv.DictReader(f)
                    columns = list(reader.fieldnames or ["step"])
                    rows = [r for r in reader if r.get("step") and int(r["step"]) <= resume_step]
                self.columns, self.rows = columns, rows
            except (UnicodeDecodeError, ValueError, csv.Error) as e:  # not a metrics log
                damaged = self.path.with_name(f"{self.path.name}.damaged")
                os.replace(self.path, damaged)
                warnings.warn(
                    f"{self.path} is damaged ({e}); kept as {damaged}, the log starts afresh "
                    f"after step {resume_step}",
                    NashmoeWarning,
                    stacklevel=2,
                )
            self._rewrite()
        else:
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: Mapping[str, float | int | None]) -> None:
        row = {"step": str(int(step))}
        row.update({k: _fmt(v) for k, v in metrics.items()})
        self.rows.append(row)
        new = [k for k in metrics if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)


class TensorBoardLogger:
    """Scalars to TensorBoard event files in ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike[str], *, purge_step: int | None = None) -> None:
        board = require(
            "torch.utils.tensorboard",
            extra="tensorboard",
            purpose="TensorBoard logging",
            package="tensorboard",
        )
        self.writer = board.SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, step: int, metrics: Mapping[str, float | int | None]) -> None:
        for k, v in metrics.items():
            if v is not None and math.isfinite(float(v)):
                self.writer.add_scalar(k, float(v), global_step=int(step))

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class MetricsLogger:
    """Both loggers behind one ``log(step, metrics)`` (a no-op on ranks other than 0).

    Args:
        run_dir: ``runs/<name>``.
        tensorboard: ``"auto"`` (when installed), ``"on"`` (error if missing) or ``"off"``.
        resume_step: the step a resumed run continues from (later rows are dropped).
        enabled: False on ranks other than 0.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        tensorboard: str = "auto",
        resume_step: int | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.csv: CSVLogger | None = None
        self.tb: TensorBoardLogger | None = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        self.csv = CSVLogger(run_dir / "metrics.csv", resume_step=resume_step)
        if tensorboard == "on" or (tensorboard == "auto" and tensorboard_available()):
            purge = None if resume_step is None else resume_step + 1
            self.tb = TensorBoardLogger(run_dir / "tensorboard", purge_step=purge)

    def log(self, step: int, metrics: Mapping[str, float | int | None]) -> None:
        if not self.enabled:
            return
        assert self.csv is not None
        self.csv.log(step, metrics)
        if self.tb is not None:
            self.tb.log(step, metrics)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def read_metrics(path: str | os.PathLike[str]) -> dict[str, list[float | None]]:
    """``metrics.csv`` as columns; empty cells are None."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols: dict[str, list[float | None]] = {k: [] for k in reader.fieldnames or []}
        for row in reader:
            for k in cols:
                v = row.get(k, "")
                cols[k].append(float(v) if v not in ("", None) else None)
    return cols
