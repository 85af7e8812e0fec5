"""The image experiment: MoE Vision Transformers on CIFAR-10 and robustness to common corruptions.

The NAMEx paper trains Swin-MoE on ImageNet-1k with each method and evaluates it under distribution
shift (ImageNet-A/R/O), claiming that complex momentum helps most under shift. This package builds
the same experiment at the scale of a small CPU machine:

- :class:`ViT` / :class:`ViTConfig` (:mod:`~nashmoe.vision.model`): a small Vision Transformer whose
  feed-forward blocks are :class:`~nashmoe.moe.MoEFeedForward` layers of any method, routed one
  unit per image (one merged expert per image), the propagation state threaded through the blocks.
- :data:`CORRUPTIONS` and :func:`corrupt` (:mod:`~nashmoe.vision.corruptions`): the 15 CIFAR-10-C
  corruptions at 5 severities with the published CIFAR constants (Hendrycks & Dietterich 2019).
- :func:`random_crop_flip`: the standard CIFAR augmentation in torch.
- :mod:`~nashmoe.vision.experiment`: splits, training with validation-based epoch selection, the
  corrupted test set, one run; :mod:`~nashmoe.vision.report`: summaries over seeds, corruption
  error (CE, mCE) relative to the dense model, paired differences, the plot.
- ``nashmoe vision``: the command line (:mod:`~nashmoe.vision.cli`).

Needs Pillow and scipy (``pip install 'nashmoe[vision]'``); the plot needs matplotlib.
"""

from nashmoe.vision.augment import random_crop_flip
from nashmoe.vision.corruptions import CORRUPTION_FAMILIES, CORRUPTIONS, SEVERITIES, corrupt
from nashmoe.vision.model import ViT, ViTConfig, ViTOutput, to_input

__all__ = [
    "CORRUPTIONS",
    "CORRUPTION_FAMILIES",
    "SEVERITIES",
    "ViT",
    "ViTConfig",
    "ViTOutput",
    "corrupt",
    "random_crop_flip",
    "to_input",
]
