"""Unsupervised frozen image features: k-means on whitened patches (Coates, Lee & Ng, "An Analysis
of Single-Layer Networks in Unsupervised Feature Learning", AISTATS 2011).

Used by the J-sweep benchmark so that many (loss, J, seed) runs train only a small head: the
features are learned without labels, so they carry no information about the experts or the losses
compared.

Pipeline: random ``patch`` × ``patch`` patches → per-patch brightness/contrast normalisation → ZCA
whitening → spherical-init k-means (Lloyd iterations) → for each image, the "triangle" activation
``max(0, mean_k(d) − d_k)`` of the distances d to the centroids at every stride-1 position → sum
pooling over the four quadrants (4k features) → standardisation with train statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["PatchKMeansFeatures", "fit_patch_kmeans"]


def _as_nchw(images: np.ndarray | Tensor) -> Tensor:
    """A [N, 3, H, W] view of uint8 HWC images (not yet converted to float)."""
    x = torch.as_tensor(np.asarray(images))
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2)


def _normalise_patches(p: Tensor, eps_var: float = 10.0 / 255.0**2) -> Tensor:
    """Per-patch mean removal and contrast normalisation (rows are flattened patches)."""
    p = p - p.mean(dim=-1, keepdim=True)
    return p / torch.sqrt(p.var(dim=-1, keepdim=True) + eps_var)


@dataclass(frozen=True)
class PatchKMeansFeatures:
    """A fitted extractor; call :meth:`transform` on uint8 images [N, 32, 32, 3]."""

    patch: int
    stride: int
    mean: Tensor  # [D] mean of the normalised patches
    whiten: Tensor  # [D, D] ZCA matrix
    centroids: Tensor  # [k, D] in whitened space
    feat_mean: Tensor | None = None  # [4k] standardisation (set by fit_patch_kmeans)
    feat_std: Tensor | None = None

    @property
    def num_features(self) -> int:
        return 4 * self.centroids.shape[0]

    @torch.no_grad()
    def _raw(self, images: np.ndarray | Tensor, batch_size: int) -> Tensor:
        x_all = _as_nchw(images)
        outs = []
        c = self.centroids
        for start in range(0, x_all.shape[0], batch_size):
            x = x_all[start : start + batch_size].contiguous().float() / 255.0
            # [B, 3, S, S, p, p] view -> rows ordered (image, row, col), columns (C, p, p)
            win = x.unfold(2, self.patch, self.stride).unfold(3, self.patch, self.stride)
            b, side = win.shape[0], win.shape[2]
            p = _normalise_patches(win.permute(0, 2, 3, 1, 4, 5).reshape(b * side * side, -1))
            pw = (p - self.mean) @ self.whiten
            dist = torch.cdist(pw, c, compute_mode="use_mm_for_euclid_dist")
            act = torch.sub(dist.mean(1, keepdim=True), dist, out=dist).clamp_min_(0.0)  # triangle
            act = act.view(b, side, side, -1)
            h = side // 2
            pooled = torch.cat(
                [
                    act[:, :h, :h].sum((1, 2)),
                    act[:, :h, h:].sum((1, 2)),
                    act[:, h:, :h].sum((1, 2)),
                    act[:, h:, h:].sum((1, 2)),
                ],
                dim=1,
            )
            outs.append(pooled)
        return torch.cat(outs)

    def transform(self, images: np.ndarray | Tensor, *, batch_size: int = 250) -> Tensor:
        """float32 [N, 4k] features (standardised when fitted with statistics)."""
        feats = self._raw(images, batch_size)
        if self.feat_mean is not None and self.feat_std is not None:
            feats = (feats - self.feat_mean) / self.feat_std
        return feats


@torch.no_grad()
def fit_patch_kmeans(
    images: np.ndarray,
    *,
    num_centroids: int = 256,
    patch: int = 6,
    stride: int = 1,
    num_patches: int = 100_000,
    iterations: int = 10,
    seed: int = 0,
    whiten_eps: float = 0.1,
    stats_images: int = 5000,
) -> PatchKMeansFeatures:
    """Fit the patch k-means extractor on unlabelled images (uint8 [N, 32, 32, 3]).

    Feature standardisation statistics are computed on the first ``stats_images`` images.
    """
    if stride < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    if num_centroids < 2 or patch < 2 or num_patches < num_centroids or iterations < 1:
        raise ValueError(
            "need num_centroids >= 2, patch >= 2, num_patches >= num_centroids, iterations >= 1"
        )
    gen = torch.Generator().manual_seed(seed)
    x = _as_nchw(images)
    n, _, height, width = x.shape
    img = torch.randint(0, n, (num_patches,), generator=gen)
    r = torch.randint(0, height - patch + 1, (num_patches,), generator=gen)
    c = torch.randint(0, width - patch + 1, (num_patches,), generator=gen)
    offs = torch.arange(patch)
    rows = (r[:, None] + offs[None, :])[:, :, None].expand(-1, patch, patch)
    cols = (c[:, None] + offs[None, :])[:, None, :].expand(-1, patch, patch)
    ch = torch.arange(3)[None, :, None, None]
    patches = x[img[:, None, None, None], ch, rows[:, None], cols[:, None]]  # [P, 3, p, p]
    patches = patches.reshape(num_patches, -1).double() / 255.0  # unfold order (C, p, p)
    p = _normalise_patches(patches)
    mean = p.mean(0)
    cov = torch.cov((p - mean).T)
    evals, evecs = torch.linalg.eigh(cov)
    whiten = evecs @ torch.diag(1.0 / torch.sqrt(evals.clamp_min(0) + whiten_eps)) @ evecs.T
    pw = ((p - mean) @ whiten).float()
    cent = torch.randn(num_centroids, pw.shape[1], generator=gen) * 0.1
    for _ in range(iterations):
        assign = (pw @ cent.T - 0.5 * (cent * cent).sum(1)).argmax(1)
        counts = torch.bincount(assign, minlength=num_centroids).float()
        sums = torch.zeros_like(cent).index_add_(0, assign, pw)
        alive = counts > 0
        cent[alive] = sums[alive] / counts[alive, None]
        dead = int((~alive).sum())
        if dead:  # re-seed empty clusters on random patches
            cent[~alive] = pw[torch.randint(0, num_patches, (dead,), generator=gen)]
    extractor = PatchKMeansFeatures(patch, stride, mean.float(), whiten.float(), cent)
    raw = extractor._raw(images[: min(stats_images, n)], 250)
    return PatchKMeansFeatures(
        patch, stride, mean.float(), whiten.float(), cent, raw.mean(0), raw.std(0).clamp_min(1e-6)
    )
