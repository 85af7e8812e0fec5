"""Batches for language-model training and exact evaluation.

- :func:`get_batch` draws random contiguous blocks (nanoGPT style), reproducibly from a
  ``torch.Generator``; under DDP every rank draws the *global* batch with the same generator
  state and keeps its own rows, so ``world_size`` ranks with ``batch_size=B`` see exactly the
  rows one process sees with ``batch_size=world_size*B``.
- :func:`iter_eval_batches` walks a split in non-overlapping blocks so that every token after
  the first is a target exactly once; the perplexity is then exact and identical across runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["IGNORE_INDEX", "get_batch", "iter_eval_batches", "num_eval_blocks"]

#: Target value of positions that must not be scored (``F.cross_entropy``'s default).
IGNORE_INDEX = -100


def _check(
    data: torch.Tensor, *, batch_size: int, block_size: int, rank: int, world_size: int
) -> None:
    if not isinstance(data, torch.Tensor) or data.dim() != 1:
        raise ValueError("data must be a 1-D tensor of token ids")
    if data.dtype.is_floating_point or data.dtype.is_complex or data.dtype == torch.bool:
        raise ValueError(f"data must hold integer token ids, got dtype {data.dtype}")
    for name, v in (
        ("batch_size", batch_size),
        ("block_size", block_size),
        ("world_size", world_size),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
    if data.numel() < block_size + 1:
        raise ValueError(
            f"block_size={block_size} is larger than the split: a block needs block_size+1="
            f"{block_size + 1} tokens (inputs plus the shifted targets) but the split has "
            f"{data.numel()}"
        )


def get_batch(
    data: torch.Tensor,
    *,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random contiguous blocks: ``x = data[s : s+T]``, ``y = data[s+1 : s+T+1]``.

    Args:
        data: 1-D integer tensor (a split).
        batch_size: rows for this rank.
        block_size: ``T``, the sequence length.
        generator: a CPU ``torch.Generator``; the same seed gives the same batches.
        device: where to put ``x`` and ``y`` (default: ``data``'s device).
        rank, world_size: under data parallelism, the starts of ``world_size * batch_size``
            rows are drawn (consuming the generator identically on every rank) and this rank
            keeps rows ``rank*batch_size : (rank+1)*batch_size``.

    Returns:
        ``(x, y)``, both ``[batch_size, block_size]`` ``torch.long``. Starts are uniform over
        ``0 .. len(data) - block_size - 1``.
    """
    _check(data, batch_size=batch_size, block_size=block_size, rank=rank, world_size=world_size)
    high = data.numel() - block_size
    starts = torch.randint(high, (world_size * batch_size,), generator=generator)
    starts = starts[rank * batch_size : (rank + 1) * batch_size]
    idx = starts[:, None] + torch.arange(block_size + 1)
    chunk = data[idx.to(data.device)].long()
    x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


def num_eval_blocks(num_tokens: int, block_size: int) -> int:
    """Blocks :func:`iter_eval_batches` makes of a split of ``num_tokens`` tokens (all ranks)."""
    return -(-(num_tokens - 1) // block_size)


def iter_eval_batches(
    data: torch.Tensor,
    *,
    batch_size: int,
    block_size: int,
    device: torch.device | str | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic evaluation batches covering the whole split.

    The ``N = len(data) - 1`` targets ``data[1:]`` are cut into blocks of ``T = block_size``:
    block ``j`` has ``x = data[jT : jT+T]`` and ``y = data[jT+1 : jT+T+1]``. When ``T`` does
    not divide ``N``, the last ``r = N mod T`` targets form a final block that keeps a full
    window of context: ``x = data[N-T : N]``, ``y = data[N-T+1 : N+1]`` with its first ``T-r``
    targets (already scored by earlier blocks) set to :data:`IGNORE_INDEX`. So every target is
    scored exactly once and every block has shape ``T``; sum the per-token losses over
    ``y != IGNORE_INDEX`` (``F.cross_entropy(..., reduction="sum")`` ignores ``-100``) and
    divide by ``N`` for the exact mean loss. Batches hold up to ``batch_size`` blocks, in order
    (the last batch may be smaller).

    Under data parallelism, block ``j`` goes to rank ``j % world_size``; ranks with one block
    fewer get a padding block whose targets are all ``IGNORE_INDEX``, so every rank yields the
    same number of batches of the same shapes (collectives inside the model stay matched).
    Summing loss sums and target counts over ranks gives the single-process result.

    Yields:
        ``(x, y)``: ``[b, block_size]`` ``torch.long`` tensors, ``b <= batch_size``.
    """
    _check(data, batch_size=batch_size, block_size=block_size, rank=rank, world_size=world_size)
    n, t = data.numel(), block_size
    total = num_eval_blocks(n, t)
    full = (n - 1) // t
    mine = list(range(rank, total, world_size))
    per_rank = -(-total // world_size)
    padding = per_rank - len(mine)

    def block(j: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = j * t if j < full else n - 1 - t
        chunk = data[start : start + t + 1].long()
        x, y = chunk[:-1], chunk[1:].clone()
        if j >= full:  # the final partial block: score only the targets not yet scored
            y[: t - (n - 1 - full * t)] = IGNORE_INDEX
        return x, y

    def pad() -> tuple[torch.Tensor, torch.Tensor]:
        x0 = data[:t].long()
        return x0, torch.full_like(x0, IGNORE_INDEX)

    jobs = mine + [-1] * padding
    for i in range(0, len(jobs), batch_size):
        part = [block(j) if j >= 0 else pad() for j in jobs[i : i + batch_size]]
        x = torch.stack([b[0] for b in part])
        y = torch.stack([b[1] for b in part])
        if device is not None:
            x, y = x.to(device), y.to(device)
        yield x, y
