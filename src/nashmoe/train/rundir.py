"""Run directories: who may write one (a lock file), whether it already holds a run, and
whether it can be written at all.

- :class:`RunLock` keeps two processes out of one run directory: ``<run>/run.lock`` is created
  exclusively (``O_EXCL``) and holds the owner's pid and host. A lock left by a dead process on
  this host is stale and taken over; a live owner, or an owner on another host, is an error.
- :func:`prepare_run_dir` refuses to start a new run over an existing one unless asked to
  (``overwrite``: the old run's files are deleted first) and refuses to resume when there is
  nothing to resume.
- :func:`check_writable_dir` checks an output directory before any work starts.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from nashmoe.train._process import hostname, pid_alive
from nashmoe.train.checkpoint import has_checkpoint

__all__ = [
    "LOCK",
    "RUN_FILES",
    "RunDirError",
    "RunLock",
    "check_writable_dir",
    "is_existing_run",
    "prepare_run_dir",
]

LOCK = "run.lock"
#: What a run writes into its directory (``--overwrite`` deletes exactly these).
RUN_FILES = (
    "checkpoints",
    "config.json",
    "metrics.csv",
    "metrics.csv.damaged",
    "result.json",
    "record.json",
    "tensorboard",
)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (the message names it and the remedy)."""


def check_writable_dir(path: str | os.PathLike[str], *, option: str = "--out") -> Path:
    """Create ``path`` if needed and check that a file can be created in it.

    Raises:
        RunDirError: ``path`` (or a parent) is a file, or the directory cannot be written (a
            read-only file system, no permission); the message names ``option`` and the path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{option} {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.close(fd)
        probe.unlink()
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(f"{option} {path}: a parent of it is a file, not a directory") from None
    except OSError as e:
        raise RunDirError(f"{option} {path} is not writable: {e.strerror or e}") from None
    return path


def is_existing_run(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds the files of an earlier run (checkpoints, config, metrics or a
    result)."""
    path = Path(path)
    return any((path / name).exists() for name in RUN_FILES)


def prepare_run_dir(
    path: str | os.PathLike[str], *, resume: bool | str = False, overwrite: bool = False
) -> None:
    """Check that a run may start in ``path`` as asked; with ``overwrite``, delete the earlier
    run's files (:data:`RUN_FILES`). Call it while holding the directory's :class:`RunLock`.

    Args:
        resume: ``True``: a checkpoint must be there; ``"auto"``: resume when there is one, else
            start afresh (over whatever a run that never reached a checkpoint left); ``False``:
            start afresh, which needs an empty directory or ``overwrite``.

    Raises:
        RunDirError: a new run over an existing one, or ``resume=True`` with nothing to resume.
    """
    path = Path(path)
    if overwrite and resume:
        raise RunDirError("overwrite and resume exclude each other")
    if resume is True and not has_checkpoint(path):
        raise RunDirError(
            f"--resume: nothing to resume in {path} (no checkpoints/latest.json); "
            "start without --resume"
        )
    if overwrite:
        for name in RUN_FILES:
            target = path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        return
    if not resume and is_existing_run(path):
        raise RunDirError(
            f"{path} already holds a run; pass --resume to continue it or --overwrite to "
            "replace it (overwrite=True)"
        )


class RunLock:
    """An exclusive lock on a run directory (``<run>/run.lock``); a context manager.

    A lock whose owner is a dead process on this host is stale and taken over.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / LOCK
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                owner = json.load(f)
            return owner if isinstance(owner, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or garbage

    def acquire(self) -> RunLock:
        """Take the lock.

        Raises:
            RunDirError: another live process (or a process on another host) holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": hostname(), "time": time.time()}
        for _ in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile
                pid, host = owner.get("pid"), owner.get("host")
                if not isinstance(pid, int):
                    # a lock being written right now, or garbage left by a crash
                    age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0
                    if age < 5:
                        time.sleep(0.1)
                        continue
                elif host != me["host"]:
                    raise RunDirError(
                        f"{self.path.parent} is locked by process {pid} on host {host!r} "
                        f"({self.path}); if that run is over, delete the lock file"
                    ) from None
                elif pid_alive(pid):
                    raise RunDirError(
                        f"{self.path.parent} is in use by process {pid} (lock file "
                        f"{self.path}); wait for it to finish or use another --out"
                    ) from None
                # stale: its owner is dead. Rename it away first, so that of two processes
                # taking over at once only one removes it.
                stale = self.path.with_name(f"{LOCK}.stale-{os.getpid()}")
                try:
                    os.replace(self.path, stale)
                except FileNotFoundError:
                    continue
                try:
                    with open(stale, encoding="utf-8") as f:
                        moved = json.load(f)
                except (OSError, ValueError):
                    moved = {}
                if isinstance(moved, dict) and moved.get("pid") not in (pid, None):
                    # another process took the stale lock over first: give its lock back
                    try:
                        os.link(stale, self.path)
                    except OSError:
                        pass
                stale.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return self
        raise RunDirError(f"could not take the lock {self.path} (it keeps changing)")

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if not self.held:
            return
        self.held = False
        owner = self._owner()
        if owner and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
