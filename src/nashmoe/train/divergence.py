"""Divergence: a non-finite training loss, gradient or validation loss stops the run.

:func:`nonfinite_report` checks one optimiser step's loss and gradient norm on every rank (one
small all-reduce, so that every rank stops at the same step) and names what was non-finite;
:class:`TrainingDiverged` carries the step and the last good checkpoint, which the run leaves in
place.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nashmoe.train.distributed import DistContext, all_reduce_sum

__all__ = ["TrainingDiverged", "nonfinite_report"]


class TrainingDiverged(RuntimeError):
    """The run stopped at ``step`` because ``what`` was not finite.

    Attributes:
        step: the optimiser step (1-based) that produced the non-finite value.
        what: what was non-finite, e.g. ``"training loss (nan) and gradient norm (inf)"``.
        checkpoint: the last good checkpoint of the run (None when none was written).
    """

    def __init__(self, step: int, what: str, checkpoint: Path | None) -> None:
        self.step = step
        self.what = what
        self.checkpoint = checkpoint
        kept = (
            f"the last good checkpoint, {checkpoint}, is kept"
            if checkpoint is not None
            else "no checkpoint had been written"
        )
        super().__init__(
            f"training diverged at step {step}: non-finite {what}; {kept} (try a lower --lr, "
            "a longer --warmup or --grad-clip)"
        )


def _local(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a tensor or a DTensor (FSDP's gradient norm)."""
    full = getattr(value, "full_tensor", None)
    return full() if callable(full) else value


def nonfinite_report(
    loss: torch.Tensor, grad_norm: torch.Tensor | None, ctx: DistContext
) -> str | None:
    """What was non-finite in this step on any rank (None: all finite).

    Args:
        loss: this rank's summed training loss of the step (language model plus balance loss).
        grad_norm: the global gradient norm (None: not computed).
    """
    loss = _local(loss).detach().double().reshape(())
    norm = (
        _local(grad_norm).detach().double().reshape(())
        if grad_norm is not None
        else torch.zeros((), dtype=torch.float64, device=loss.device)
    )
    flags = torch.stack([(~torch.isfinite(loss)).double(), (~torch.isfinite(norm)).double()])
    all_reduce_sum(flags, ctx)
    bad_loss, bad_norm = (bool(f > 0) for f in flags.tolist())
    if not (bad_loss or bad_norm):
        return None
    where = " on this rank" if ctx.distributed else ""  # another rank may be the culprit
    parts = []
    if bad_loss:
        parts.append(f"training loss ({float(loss):.6g}{where})")
    if bad_norm:
        parts.append(f"gradient norm ({float(norm):.6g}{where})")
    return " and ".join(parts)
