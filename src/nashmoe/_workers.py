"""Worker processes that do not outlive the process that started them.

``ProcessPoolExecutor`` workers keep running when their parent is killed (SIGTERM, SIGKILL, a
session that ends): an interrupted ``nashmoe compare --jobs 2`` would leave its training
workers running, holding the cores and memory. :func:`exit_with_parent` is a pool
``initializer`` that starts a daemon thread which ends the worker once its parent is gone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["exit_with_parent", "worker_initializer"]

_POLL_SECONDS = 1.0


def _watch(parent: int, poll: float) -> None:
    while True:
        time.sleep(poll)
        if os.getppid() != parent:  # re-parented: the parent has exited or was killed
            os._exit(1)


def exit_with_parent(poll: float = _POLL_SECONDS) -> None:
    """End this process (within ``poll`` seconds) once the process that started it is gone."""
    thread = threading.Thread(
        target=_watch, args=(os.getppid(), poll), name="exit-with-parent", daemon=True
    )
    thread.start()


def worker_initializer(initializer: Callable[..., Any] | None = None) -> Callable[..., None]:
    """A pool ``initializer`` that runs :func:`exit_with_parent`, then ``initializer(*args)``."""
    return _Initializer(initializer)


class _Initializer:
    """Picklable (spawn start method) wrapper around an optional initializer."""

    def __init__(self, initializer: Callable[..., Any] | None) -> None:
        self.initializer = initializer

    def __call__(self, *args: Any) -> None:
        exit_with_parent()
        if self.initializer is not None:
            self.initializer(*args)
