"""Exact perplexity of a split: every target token scored once (``iter_eval_batches``), the summed
cross-entropy divided by the number of targets, summed over DDP ranks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nashmoe.data import IGNORE_INDEX, iter_eval_batches
from nashmoe.train.distributed import DistContext, all_reduce_sum

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: torch.Tensor,
    *,
    block_size: int,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    ctx: DistContext | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> dict[str, float]:
    """Mean negative log-likelihood per target token of ``data`` and its perplexity.

    Args:
        model: called as ``model(x).logits``; put in eval mode for the call.
        data: a 1-D split of token ids.
        block_size: context length of each evaluation block.
        batch_size: blocks per forward pass.
        ctx: the distributed context (blocks are spread over ranks and the sums reduced).
        autocast: a factory of the autocast context used in training (None: none).

    Returns:
        ``{"loss": mean NLL (nats), "ppl": exp(loss), "tokens": targets scored}``.
    """
    ctx = ctx or DistContext(device=torch.device(device or "cpu"))
    device = device or ctx.device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for x, y in iter_eval_batches(
            data,
            batch_size=batch_size,
            block_size=block_size,
            device=device,
            rank=ctx.rank,
            world_size=ctx.world_size,
        ):
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = model(x).logits
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                y.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += loss.double()
            count += (y != IGNORE_INDEX).sum().double()
    finally:
        model.train(was_training)
    all_reduce_sum(total, ctx)
    all_reduce_sum(count, ctx)
    n = int(count.item())
    expected = data.numel() - 1
    if n != expected:  # iter_eval_batches guarantees it; a mismatch would be a bug
        raise RuntimeError(f"scored {n} targets, expected {expected}")
    mean = float(total.item()) / n
    return {"loss": mean, "ppl": math.exp(mean), "tokens": n}
