"""One process or ``torchrun``: the process group, the device, and wrapping the model.

Launch (single node, N processes; nanoGPT's habit of giving the exact commands)::

    nashmoe train --steps 2000                                          # one process
    torchrun --standalone --nproc_per_node=2 -m nashmoe.cli train ...   # DDP (gloo on CPU)
    torchrun --standalone --nproc_per_node=8 -m nashmoe.cli train --distributed fsdp ...

``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` come from the environment (no ``RANK``: a single
process); ``init_process_group("env://")`` reads ``MASTER_ADDR`` / ``MASTER_PORT``. Backend:
nccl on CUDA, gloo on CPU. Only rank 0 logs and writes.

Parameter-merging MoE layers (SMEAR, CAMEx, NAMEx) use every expert's weights in every step, so
DDP needs no ``find_unused_parameters``; it is switched on for ``smoe`` only, where a top-k layer
may leave an expert without tokens (pytorch/pytorch#43259).

FSDP (FSDP2 ``fully_shard``; meant for CUDA, it also runs on CPU with gloo, which the tests use)
shards every transformer block as its own unit, then the root (embeddings, final norm, head):
a block's parameters are gathered for its forward, freed after it (``reshard_after_forward``)
and gathered again in the backward pass, so parameters, gradients and optimizer state are
sharded and only a block or two are gathered at a time. The propagated base
expert of EP-CAMEx / NAMEx is part of every block's outputs and inputs (``Block.forward`` returns
the :class:`~nashmoe.moe.PropagationState`, a registered pytree), so FSDP's pre-backward hooks
(on outputs) and post-backward hooks (on inputs) see the gradients flowing through it into
earlier blocks. The load-balancing losses are read from the layers, not returned by the blocks:
their gradient is ready first in the backward pass and would gather every block at once; their
backward runs within the block's own backward (autograd processes a block's nodes after those of
later blocks). 0-dim parameters (a learnable η) stay replicated, with their gradients averaged by
:func:`average_gradients`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistContext",
    "all_gather_objects",
    "all_reduce_sum",
    "average_gradients",
    "barrier",
    "exit_worker",
    "init_distributed",
    "shutdown_distributed",
    "unwrap",
    "wrap_model",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank``, ``local_rank``, ``world_size`` and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    strategy: str = "none"  # "none", "ddp" or "fsdp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else ``cpu``.

    Raises:
        ValueError: an unknown device name, or CUDA asked for where it is not available (the
            message names the device as given).
    """
    requested = device
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {requested!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {requested!r} (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {requested!r}: there are only {torch.cuda.device_count()} CUDA device(s)"
        )
    return dev


def init_distributed(device: str = "auto", strategy: str = "ddp") -> DistContext:
    """Read the ``torchrun`` environment and join the process group when ``WORLD_SIZE > 1``."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return DistContext(
        rank=rank, local_rank=local_rank, world_size=world, device=dev, strategy=strategy
    )


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group together: a barrier first, so that no rank tears down its gloo
    connections while another is still using them (a rank slowed by writing the results, or by
    a busy machine, was seen to abort with "terminate called without an active exception")."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_worker(code: int) -> None:
    """End a ``torchrun`` worker process whose process group was joined, without the
    interpreter's finalisation: output is flushed, then ``os._exit(code)``.

    After :func:`shutdown_distributed` the gloo process group can still be referenced (by
    DDP's reducer, FSDP's device mesh, the trainer's objects) and is then destroyed during
    interpreter finalisation, where its worker threads were seen to abort a rank that had
    finished and written everything ("terminate called without an active exception",
    SIGABRT, so a failed ``torchrun``; seen a few times under load, in full test-suite runs,
    never in about 35 runs of the same tests alone). Does nothing (returns) outside a
    multi-process ``torchrun`` job.
    """
    if not (dist.is_available() and _env_int("WORLD_SIZE", 1) > 1):
        return
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing left to flush
            pass
    os._exit(code)


def wrap_model(
    model: nn.Module, ctx: DistContext, *, find_unused_parameters: bool
) -> tuple[nn.Module, list[nn.Parameter]]:
    """DDP or FSDP around ``model`` (already on ``ctx.device``); the model itself for one
    process.

    Returns:
        ``(wrapped, replicated)``: ``replicated`` lists the parameters FSDP leaves unsharded
        (0-dim ones, e.g. a learnable merge step η, which FSDP2 cannot shard); their gradients
        must be averaged over ranks with :func:`average_gradients` after ``backward``.
    """
    if not ctx.distributed:
        return model, []
    if ctx.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        replicated = [p for p in model.parameters() if p.dim() == 0]
        ignored = set(replicated) or None
        for block in getattr(model, "blocks", ()):  # one unit per transformer block
            fully_shard(block, reshard_after_forward=True, ignored_params=ignored)
        # The root (embeddings, final norm, head) is needed again first in the backward pass.
        wrapped = fully_shard(model, reshard_after_forward=False, ignored_params=ignored)
        return wrapped, replicated
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp = DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )
    return ddp, []


def average_gradients(params: list[nn.Parameter], ctx: DistContext) -> None:
    """Average the gradients of ``params`` over ranks (one collective)."""
    if not ctx.distributed or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).clone()
        offset += n


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 modifies the model in place)."""
    return getattr(model, "module", model)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks (in place), a no-op for one process."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
