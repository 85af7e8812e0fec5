"""AdamW with a linear warm-up and cosine decay (as nanoGPT trains GPT-2).

- :func:`param_groups`: weight decay on weight matrices and expert tensors (dim >= 2), none on
  norms, biases, scalars (η), prior logits, position-free vectors, and on the CAMEx curvature
  operators, which start at c·I: decaying them towards 0 would shrink the curvature-aware merge
  towards the bare base expert rather than regularise it.
- :func:`lr_at`: the learning rate of a step, a pure function of the step, so resuming a run needs
  no scheduler object (the step in the checkpoint is enough).

Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW), arXiv 1711.05101;
cosine schedule: Loshchilov & Hutter, "SGDR", arXiv 1608.03983.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["build_optimizer", "lr_at", "param_groups"]


def lr_at(step: int, *, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based).

    Linear warm-up from ``lr / warmup`` to ``lr`` over the first ``warmup`` steps, then cosine
    decay from ``lr`` to ``min_lr`` at step ``total - 1`` (constant ``min_lr`` after).
    """
    if step < 0 or total < 1:
        raise ValueError(f"need step >= 0 and total >= 1, got step={step}, total={total}")
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed (weights with dim >= 2, curvature excluded) and not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() >= 2 and ".curvature." not in f".{name}":
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)
