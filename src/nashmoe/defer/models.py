"""Small models with K + J outputs for multi-expert learning to defer on a CPU.

- :class:`SmallCNN`: a compact VGG-style network for 32 × 32 images (three conv stages with batch
  norm, global average pooling); takes uint8 or float images [B, 32, 32, 3] (HWC) or [B, 3, 32, 32].
- :class:`MLPHead`: an MLP over fixed features (a shared hidden layer feeds the K + J scores).
- :class:`BagOfWordsClassifier`: fastText-style text model (Joulin et al., "Bag of Tricks for
  Efficient Text Classification", EACL 2017): the mean of learned token embeddings, then an MLP.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BagOfWordsClassifier", "MLPHead", "SmallCNN"]

# Per-channel statistics of the CIFAR-10 train images (0-255 scale).
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Conv(w)-Conv(w)-Pool-Conv(2w)-Conv(2w)-Pool-Conv(4w)-Pool-GAP-Linear(num_outputs)."""

    def __init__(self, num_outputs: int, *, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        if num_outputs < 1 or width < 1:
            raise ValueError(f"num_outputs and width must be positive, got {num_outputs}, {width}")
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1), persistent=False)
        w = width
        self.features = nn.Sequential(
            _conv_block(3, w),
            _conv_block(w, w),
            nn.MaxPool2d(2),
            _conv_block(w, 2 * w),
            _conv_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_block(2 * w, 4 * w),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * w, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected images [B, H, W, 3] or [B, 3, H, W], got {tuple(x.shape)}")
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        x = (x.float() - self.mean) / self.std
        return self.head(self.dropout(self.features(x)))


class MLPHead(nn.Module):
    """``Linear → ReLU → Dropout → Linear`` over fixed features; ``hidden=0``: a linear head."""

    def __init__(
        self, in_features: int, num_outputs: int, *, hidden: int = 256, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if in_features < 1 or num_outputs < 1 or hidden < 0:
            raise ValueError(
                f"need in_features, num_outputs >= 1 and hidden >= 0, got "
                f"{in_features}, {num_outputs}, {hidden}"
            )
        if hidden == 0:
            self.net: nn.Module = nn.Linear(in_features, num_outputs)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_features, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_outputs),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float())


class BagOfWordsClassifier(nn.Module):
    """Mean of token embeddings (index 0 = padding), then ``Linear → ReLU → Linear``."""

    def __init__(
        self, vocab_size: int, num_outputs: int, *, dim: int = 64, hidden: int = 64
    ) -> None:
        super().__init__()
        if vocab_size < 2 or num_outputs < 1 or dim < 1 or hidden < 1:
            raise ValueError("need vocab_size >= 2 and positive num_outputs, dim, hidden")
        self.embed = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_outputs)
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens``: int64 [B, L] padded with 0 (a row of only padding embeds to zeros)."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
        return self.mlp(self.embed(tokens.long()))
