"""CUDA checks for the solver and NashMTL (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from nashmoe.bargaining import NashMTL, nash_bargaining, nash_direction

from . import _matrix_samplers as ms
from ._asserts import gram_of

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _mixed_batch() -> torch.Tensor:
    return torch.stack(
        [
            gram_of(ms.well_conditioned(6, seed=1)),
            gram_of(ms.rank_deficient(6, seed=2)),
            gram_of(ms.scaled(6, seed=3)),
            gram_of(torch.cat((ms.opposing(6, seed=4), ms.well_conditioned(4, p=6, seed=5)))),
            torch.zeros(6, 6, dtype=torch.float64),
        ]
    )


@pytest.mark.parametrize("cdtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(cdtype: torch.dtype) -> None:
    gram = _mixed_batch()
    cpu = nash_bargaining(gram, compute_dtype=cdtype)
    gpu = nash_bargaining(gram.cuda(), compute_dtype=cdtype)
    assert gpu.alpha.device.type == "cuda"
    assert gpu.status.cpu().tolist() == cpu.status.tolist()
    rtol = 1e-9 if cdtype == torch.float64 else 1e-4
    torch.testing.assert_close(gpu.alpha.cpu(), cpu.alpha, rtol=rtol, atol=0.0)


def test_cuda_loop_does_not_synchronise() -> None:
    gram = _mixed_batch().cuda()
    nash_bargaining(gram, validate=False)  # warm-up (caches, kernels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sol = nash_bargaining(gram, validate=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sol.status.device.type == "cuda"


def test_nash_mtl_on_cuda() -> None:
    agg = NashMTL(max_norm=1.0).cuda()
    g = ms.well_conditioned(3, seed=6).cuda()
    out = agg(g)
    assert out.gradient.device.type == "cuda"
    torch.testing.assert_close(out.weights.cpu(), NashMTL(max_norm=1.0)(g.cpu()).weights)
    agg(g)  # warm start from a CUDA buffer


def test_nash_direction_scale_on_cuda() -> None:
    g = ms.well_conditioned(5, seed=7)
    ref, d_ref = nash_direction(g)
    for scale in (1e20, 1e-25):
        sol, d = nash_direction((g * scale).float().cuda())
        assert bool(sol.ok.all())
        torch.testing.assert_close(sol.alpha.double().cpu() * scale, ref.alpha, rtol=1e-4, atol=0)
        torch.testing.assert_close(d.double().cpu(), d_ref, rtol=1e-4, atol=1e-4)
