"""Worker of ``test_fsdp_blocks.py``: per-block FSDP2 on CPU (gloo), run under ``torchrun``.

``python -m torch.distributed.run --nproc_per_node=2 _fsdp_blocks.py METHOD OUT`` trains a tiny
GPT for a few steps, each rank on half of every batch, and writes the loss curve and the final
(full) parameters to ``OUT``; :func:`reference` does the same in one process with two
accumulated micro-batches.
"""

from __future__ import annotations

import sys

import torch

from nashmoe.models import GPT, GPTConfig

STEPS = 4
BATCH = 4


def build(method: str) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=31, block_size=16, n_layer=3, n_head=2, d_model=16, d_ff=32, num_experts=3,
        segment_len=4, method=method, init_std=0.2,
    )  # fmt: skip
    return GPT(cfg)


def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, 31, (BATCH, 17), generator=gen) for _ in range(STEPS)]


def _loss(model, rows: torch.Tensor) -> torch.Tensor:
    out = model(rows[:, :-1], rows[:, 1:])
    return out.loss + out.aux_loss


def reference(method: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process, two accumulated micro-batches per step."""
    model = build(method)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for rows in batches():
        total = 0.0
        for half in rows.chunk(2):
            loss = _loss(model, half) / 2
            loss.backward()
            total += float(loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(method: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from nashmoe.train.distributed import (
        average_gradients,
        exit_worker,
        init_distributed,
        shutdown_distributed,
        wrap_model,
    )

    torch.set_num_threads(1)
    ctx = init_distributed("cpu", strategy="fsdp")
    model = build(method)
    wrapped, replicated = wrap_model(model, ctx, find_unused_parameters=False)
    units = [model, *model.blocks]
    assert all(isinstance(m, FSDPModule) for m in units), "every block and the root are sharded"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for rows in batches():
        loss = _loss(wrapped, rows.chunk(2)[ctx.rank])
        # per-block reshard after forward: the blocks' parameters are sharded again here
        for block in model.blocks:
            p = block.ffn.w_in
            assert isinstance(p, DTensor) and p.to_local().shape[0] < p.shape[0]
        loss.backward()
        average_gradients(replicated, ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / ctx.world_size)
    state = get_model_state_dict(
        wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if ctx.is_main:
        torch.save({"losses": losses, "state": state}, out)
    shutdown_distributed(ctx)
    exit_worker(0)  # as the nashmoe command does: no interpreter finalisation


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
