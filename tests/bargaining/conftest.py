"""Fixtures for the bargaining tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """Run each test on one CPU thread, then restore the setting.

    The solver's problems are tiny; with more threads, MKL's LAPACK calls wake an OpenMP team
    that, on a busy 2-core machine, can take a whole scheduler tick (10-20 ms) per call.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["small", "general"])
def solver_path(request, monkeypatch):
    """Run a test on both CPU code paths of the solver: the small-problem numpy path (the
    default for N <= 64 on the CPU) and the general torch path (large N, CUDA, torch.compile)."""
    if request.param == "general":
        from nashmoe.bargaining import _solver

        monkeypatch.setattr(_solver, "_use_small_path", lambda gram: False)
    return request.param
