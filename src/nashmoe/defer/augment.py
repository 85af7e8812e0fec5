"""Batch augmentation for 32 × 32 images: random crop after zero padding, and horizontal flip
(the standard CIFAR-10 recipe), vectorised over the batch and driven by an explicit generator."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_crop_flip"]


def random_crop_flip(x: Tensor, generator: torch.Generator, *, padding: int = 4) -> Tensor:
    """Augment images [B, H, W, C] (any dtype): pad by ``padding`` with zeros, crop back to H × W
    at a random offset per image, and flip half of them left-right."""
    if x.ndim != 4:
        raise ValueError(f"expected images [B, H, W, C], got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, h, w, c = x.shape
    padded = x.new_zeros((b, h + 2 * padding, w + 2 * padding, c))
    padded[:, padding : padding + h, padding : padding + w] = x
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)[None, :]  # [B, H]
    cols = torch.arange(w)[None, :].expand(b, -1)
    cols = torch.where(flip[:, None], (w - 1) - cols, cols) + dx[:, None]  # [B, W]
    idx = torch.arange(b)[:, None, None]
    return padded[idx, rows[:, :, None], cols[:, None, :]]
