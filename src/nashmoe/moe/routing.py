"""Routing units and router scores (spec section 4).

- ``segment`` (causal LM; Lory, arXiv 2405.03133, and CAMEx): the sequence is split into segments of
  T tokens; the merged expert of segment j is routed by the mean hidden state of segment j−1, so no
  token sees the future. Segment 0 uses a learned prior distribution (``first_segment="prior"``,
  strictly causal) or its own mean with stop-gradient (``"self"``, as the public code; non-causal).
- ``sequence`` (encoders): one unit per sequence, the mean over non-padding tokens only.
- ``image``: one unit per image, the mean over its patch tokens.
- ``token``: every token is its own unit.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_mean", "segment_means", "split_segments"]


def num_segments(seq_len: int, segment_len: int) -> int:
    return -(-seq_len // segment_len)


def split_segments(x: Tensor, segment_len: int) -> Tensor:
    """``[B, S, d] -> [B, nseg, T, d]``, zero-padding a last partial segment."""
    b, s, d = x.shape
    nseg = num_segments(s, segment_len)
    pad = nseg * segment_len - s
    if pad:
        x = torch.cat([x, x.new_zeros(b, pad, d)], dim=1)
    return x.view(b, nseg, segment_len, d)


def segment_means(segments: Tensor, seq_len: int) -> Tensor:
    """Mean hidden state of every segment ``[B, nseg, d]`` (a partial last segment: over its real
    tokens only)."""
    _b, nseg, t, _d = segments.shape
    sums = segments.sum(dim=2)
    counts = torch.full((nseg,), float(t), dtype=sums.dtype, device=sums.device)
    counts[-1] = seq_len - (nseg - 1) * t
    return sums / counts[:, None]


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the token axis of ``[B, S, d]``, counting only tokens where ``mask`` is true."""
    if mask is None:
        return x.mean(dim=1)
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"attention_mask must have shape [batch, seq] = {tuple(x.shape[:2])}, "
            f"got {tuple(mask.shape)}"
        )
    m = mask.to(x.dtype)[..., None]
    count = m.sum(dim=1)
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool((count == 0).any()):  # free on the CPU; a host synchronisation elsewhere
            raise ValueError("attention_mask masks every token of some sequence")
    # On CUDA and under torch.compile (no host synchronisation) a fully masked sequence gets the
    # mean 0 instead of an error.
    return (x * m).sum(dim=1) / count.clamp_min(1)
