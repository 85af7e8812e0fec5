"""Pool workers end when their parent is killed (an interrupted ``--jobs 2`` run leaves nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nashmoe.train._process import pid_alive

PARENT = textwrap.dedent(
    """
    import multiprocessing as mp, os, signal, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from nashmoe._workers import worker_initializer

    def work(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)

    if __name__ == "__main__":
        path = sys.argv[1]
        init = worker_initializer() if sys.argv[2] == "watched" else None
        pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=init)
        pool.submit(work, path)
        while not os.path.exists(path) or not open(path).read():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _orphan(tmp_path: Path, mode: str) -> int:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    pid_file = tmp_path / f"worker-{mode}.pid"
    # No pipes: an orphaned worker would hold them open, and run() would wait for it.
    proc = subprocess.run(
        [sys.executable, str(script), str(pid_file), mode],
        timeout=120,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.returncode == -signal.SIGKILL
    return int(pid_file.read_text())


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:  # reap it if it is our child (it is not: it was the killed parent's)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not pid_alive(pid) or _zombie(pid):
            return True
        time.sleep(0.1)
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and SIGKILL")
def test_workers_exit_when_their_parent_is_killed(tmp_path):
    worker = _orphan(tmp_path, "watched")
    try:
        assert _gone_within(worker, 10.0), f"worker {worker} outlived its killed parent"
    finally:
        if pid_alive(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and SIGKILL")
def test_without_the_initializer_a_worker_outlives_its_parent(tmp_path):
    """The control: what the initializer prevents does happen without it."""
    worker = _orphan(tmp_path, "plain")
    try:
        assert not _gone_within(worker, 3.0)
    finally:
        os.kill(worker, signal.SIGKILL)


POOL = textwrap.dedent(
    """
    import json, sys, time
    from nashmoe._workers import run_in_pool

    def work(task, report):
        for _ in range(task):
            report(1)
        if task == 5:
            raise ValueError("task five failed")
        time.sleep(1.0 if task == 7 else 0.5)  # 7 runs beside the failing task
        return task * task

    if __name__ == "__main__":
        tasks = [(f"k{n}", n) for n in map(int, sys.argv[1].split(","))]
        counted, results = [], {}
        try:
            run_in_pool(work, tasks, jobs=2, progress=counted.append,
                        done=lambda key, result: results.__setitem__(key, result))
            error = None
        except ValueError as err:
            error = str(err)
        print(json.dumps({"count": sum(counted), "results": results, "error": error}))
    """
)


@pytest.mark.parametrize(
    ("tasks", "want"),
    [
        ("1,2,3", {"count": 6, "results": {"k1": 1, "k2": 4, "k3": 9}, "error": None}),
        ("7,5,1,2,3,4,6,8,9", {"error": "task five failed"}),
    ],
)
def test_run_in_pool_reports_progress_results_and_errors(tmp_path, tasks, want) -> None:
    import json

    script = tmp_path / "pool.py"
    script.write_text(POOL)
    proc = subprocess.run(
        [sys.executable, str(script), tasks], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for key, value in want.items():
        assert got[key] == value
    if want["error"]:
        # 7, running beside the failing 5, finishes and is delivered; of the seven queued behind
        # them only those already handed to a worker run, the rest are cancelled. How many reach
        # a worker before the failure is seen depends on the machine's load (on a busy 2-core CI
        # box 4 of them ran: 5 results with 7's), so the test asks only that some were
        # cancelled: without cancellation all 8 run (checked by removing the cancel: it fails).
        assert got["results"]["k7"] == 49
        assert len(got["results"]) < 8
