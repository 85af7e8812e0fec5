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
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["exit_with_parent", "run_in_pool", "worker_initializer"]

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


_PROGRESS_QUEUE: Any = None


def _set_progress_queue(queue: Any) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = queue


def _call_with_progress(fn: Callable[[Any, Any], Any], task: Any) -> Any:
    return fn(task, _PROGRESS_QUEUE.put if _PROGRESS_QUEUE is not None else None)


def run_in_pool(
    fn: Callable[[Any, Callable[[int], None] | None], Any],
    tasks: Sequence[tuple[Any, Any]],
    *,
    jobs: int,
    progress: Callable[[int], None] | None = None,
    done: Callable[[Any, Any], None],
) -> None:
    """Run ``fn(task, report)`` for every ``(key, task)`` in ``jobs`` spawned worker processes
    that end with this process (:func:`exit_with_parent`).

    ``fn`` must be a module-level function (it is pickled); ``report(n)`` sends a count to
    ``progress`` in this process; ``done(key, result)`` is called here as each task finishes (a
    worker's exception is raised here, after ``done`` of the tasks that finished with it and
    after the pool has shut down: the queued tasks are cancelled, the running ones end).
    """
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")  # no fork of a process that already runs torch threads
    q = ctx.Queue()

    def drain() -> None:
        while True:
            try:
                n = q.get_nowait()
            except queue_mod.Empty:
                return
            if progress is not None:
                progress(n)

    with ProcessPoolExecutor(
        max_workers=max(1, min(jobs, len(tasks))),
        mp_context=ctx,
        initializer=worker_initializer(_set_progress_queue),
        initargs=(q,),
    ) as pool:
        pending = {pool.submit(_call_with_progress, fn, task): key for key, task in tasks}
        try:
            while pending:
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                drain()
                error: BaseException | None = None
                for fut in finished:  # every task that succeeded is handed over first
                    key = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BaseException as e:
                        error = error or e
                        continue
                    done(key, result)
                if error is not None:
                    raise error
        except BaseException:  # a failed task or Ctrl-C: start nothing more
            for fut in pending:
                fut.cancel()
            raise
    drain()  # the workers have exited: what they sent is all in the pipe now
