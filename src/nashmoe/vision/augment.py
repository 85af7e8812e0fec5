"""Standard CIFAR augmentation in torch (no torchvision): random crop with padding, horizontal flip.

As ``torchvision.transforms.RandomCrop(32, padding=4)`` (zero padding) followed by
``RandomHorizontalFlip()``, batched: one gather per batch, on uint8 ``[B, H, W, C]`` images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_crop_flip"]


def random_crop_flip(
    images: Tensor, *, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """Pad each image by ``padding`` zero pixels, take a random crop of the original size and
    mirror it horizontally with probability 1/2.

    Args:
        images: ``[B, H, W, C]`` (any dtype; uint8 in the experiment).
        padding: pixels of zero padding on every side (0: no crop).
        flip: also flip horizontally at random.
        generator: the random source (seeded by the caller for reproducibility).

    Returns:
        ``[B, H, W, C]``, same dtype and device.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [B, H, W, C], got {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, h, w, _ = images.shape
    dev = images.device
    padded = F.pad(images, (0, 0, padding, padding, padding, padding)) if padding else images
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    rows = top[:, None] + torch.arange(h, device=dev)  # [B, H]
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        mirror = (torch.rand(b, generator=generator) < 0.5).to(dev)
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    cols = left[:, None] + cols  # [B, W]
    bi = torch.arange(b, device=dev)[:, None, None]
    return padded[bi, rows[:, :, None], cols[:, None, :]]
