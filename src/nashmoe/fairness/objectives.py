"""Per-example losses and the validation objectives of fairness-aware meta-learning.

- Validation loss per meta example (reference code of Zeng et al., NeurIPS 2024,
  arXiv 2406.07029): cross-entropy plus a "soft-F1" term, ``val_loss="ce+soft_f1"``; or plain
  ``"ce"``. With one-hot y and p = sigmoid(logits) per class, tp = p·y, fp = p·(1−y),
  fn = (1−p)·y, the term is sigmoid(Σ_c −2tp_c / (2tp_c + fn_c + fp_c)).
- Stage-2 objectives on the group means L_g of the validation losses (fairness.md, section 5):
  ``"ltr"`` mean over the meta set (Ren et al., ICML 2018), ``"forml"`` max_g L_g − min_g L_g
  (Yan et al., arXiv 2202.01719), ``"meta-gdro"`` max_g L_g. Max and min are non-smooth;
  autograd picks the active group, as the reference does.
- DRO (CVaR) training loss: the sum of the largest ``fraction`` of the batch's losses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "OBJECTIVES",
    "VAL_LOSSES",
    "cvar_loss",
    "objective_value",
    "per_example_cross_entropy",
    "soft_f1_term",
    "validation_losses",
]

OBJECTIVES = ("ltr", "forml", "meta-gdro")
VAL_LOSSES = ("ce+soft_f1", "ce")


def per_example_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of each example, ``[N]``."""
    return F.cross_entropy(logits, y, reduction="none")


def soft_f1_term(logits: Tensor, y: Tensor) -> Tensor:
    """The reference's per-example soft-F1 term sigmoid(Σ_c −2tp_c / (2tp_c + fn_c + fp_c))."""
    onehot = F.one_hot(y, num_classes=logits.shape[-1]).to(logits.dtype)
    p = torch.sigmoid(logits)
    tp = p * onehot
    fp = p * (1 - onehot)
    fn = (1 - p) * onehot
    return torch.sigmoid((-2 * tp / (2 * tp + fn + fp)).sum(-1))


def validation_losses(logits: Tensor, y: Tensor, kind: str = "ce+soft_f1") -> Tensor:
    """Per-example validation loss ``[N]``: ``"ce+soft_f1"`` (reference default) or ``"ce"``."""
    if kind == "ce":
        return per_example_cross_entropy(logits, y)
    if kind == "ce+soft_f1":
        return per_example_cross_entropy(logits, y) + soft_f1_term(logits, y)
    raise ValueError(f"unknown val_loss {kind!r}; choose from {list(VAL_LOSSES)}")


def objective_value(objective: str, val_losses: Tensor, group_coefficients: Tensor) -> Tensor:
    """Scalar stage-2 objective from per-example validation losses ``[V]``.

    ``group_coefficients`` ``[G, V]`` has row g equal to 1/|g| on the meta examples of group g,
    so ``group_coefficients @ val_losses`` are the group means L_g.
    """
    if objective == "ltr":
        return val_losses.mean()
    group_losses = group_coefficients.to(val_losses.dtype) @ val_losses
    if objective == "forml":
        return group_losses.max() - group_losses.min()
    if objective == "meta-gdro":
        return group_losses.max()
    raise ValueError(f"unknown objective {objective!r}; choose from {list(OBJECTIVES)}")


def cvar_loss(losses: Tensor, fraction: float = 0.4) -> Tensor:
    """Sum of the largest ``int(fraction · N)`` losses (at least one; CVaR-DRO of the reference)."""
    if not 0 < fraction <= 1 or math.isnan(fraction):
        raise ValueError(f"cvar_fraction must lie in (0, 1], got {fraction}")
    k = max(1, int(losses.shape[0] * fraction))
    return torch.topk(losses, k).values.sum()
