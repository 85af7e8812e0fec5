"""Expert constructions for multi-expert learning to defer.

- :func:`synthetic_expert_specs` / :func:`sample_synthetic_experts`: experts with class-dependent
  accuracy, generalising the "CIFAR-K" expert of Mozannar & Sontag (ICML 2020): expert j answers
  the true label with probability ``p_in`` on its specialty classes and ``p_out`` elsewhere,
  otherwise a uniform random class (right by chance 1/K), so its accuracy is ``p + (1 − p)/K``.
  Families named after the settings of Liu et al. (arXiv 2602.17144): ``specialist`` (disjoint
  specialties), ``overlapped`` (seeded round-robin specialties of a fixed size, several experts per
  class) and ``varying`` (every class in the specialty, ``p_in`` spread so one expert is clearly
  best).
  Predictions are drawn once per example with a seeded generator: experts are fixed, not resampled.
- :func:`sample_vote_annotators`: simulated annotators for the hate-speech data: each draws its
  answer from the tweet's vote distribution (with replacement, as human_ai_deferral's "random
  annotator"), optionally swapping hate and offensive with probability ``q_j`` for diversity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ExpertSpec",
    "sample_synthetic_experts",
    "sample_vote_annotators",
    "synthetic_expert_specs",
]

FAMILIES = ("specialist", "overlapped", "varying")


@dataclass(frozen=True)
class ExpertSpec:
    """One synthetic expert: right with probability ``p_in`` on ``specialty``, ``p_out`` elsewhere,
    otherwise a uniform random class."""

    specialty: frozenset[int]
    p_in: float
    p_out: float

    def accuracy(self, label: int, num_classes: int) -> float:
        """Expected accuracy on an example of class ``label``."""
        p = self.p_in if label in self.specialty else self.p_out
        return p + (1.0 - p) / num_classes


def synthetic_expert_specs(
    num_experts: int,
    num_classes: int,
    *,
    family: str = "overlapped",
    specialty_size: int = 3,
    p_in: float = 0.9,
    p_out: float = 0.0,
    p_in_min: float = 0.3,
    seed: int = 0,
) -> list[ExpertSpec]:
    """Specialties and accuracies of ``num_experts`` synthetic experts.

    Args:
        family: ``"overlapped"``: expert j gets ``specialty_size`` consecutive classes of a seeded
            class permutation, continuing round-robin where expert j − 1 stopped, so every class is
            covered ``J·specialty_size / K`` times up to one. ``"specialist"``: the classes are
            dealt round-robin over a seeded permutation into J disjoint sets (J ≤ K; sizes
            differ by at most one). ``"varying"``: every class in every specialty and ``p_in``
            spread linearly from ``p_in`` (expert 0, the best) down to ``p_in_min``.
        specialty_size: classes per expert for ``overlapped``.
        p_in, p_out: probabilities of answering correctly (before the uniform fallback).
        seed: seeds the class permutation.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if num_experts < 1 or num_classes < 2:
        raise ValueError(
            f"need num_experts >= 1 and num_classes >= 2, got {num_experts}, {num_classes}"
        )
    for name, p in (("p_in", p_in), ("p_out", p_out), ("p_in_min", p_in_min)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {p}")
    perm = np.random.default_rng(seed).permutation(num_classes)
    if family == "overlapped":
        if not 1 <= specialty_size <= num_classes:
            raise ValueError(f"specialty_size must be in [1, {num_classes}], got {specialty_size}")
        return [
            ExpertSpec(
                frozenset(
                    int(perm[(j * specialty_size + i) % num_classes]) for i in range(specialty_size)
                ),
                p_in,
                p_out,
            )
            for j in range(num_experts)
        ]
    if family == "specialist":
        if num_experts > num_classes:
            raise ValueError(
                f"specialist experts need disjoint specialties: J={num_experts} > K={num_classes}"
            )
        return [
            ExpertSpec(frozenset(int(c) for c in perm[j::num_experts]), p_in, p_out)
            for j in range(num_experts)
        ]
    if p_in_min > p_in:
        raise ValueError(f"p_in_min={p_in_min} must not exceed p_in={p_in}")
    ps = np.linspace(p_in, p_in_min, num_experts) if num_experts > 1 else np.array([p_in])
    everything = frozenset(range(num_classes))
    return [ExpertSpec(everything, float(p), float(p)) for p in ps]


def sample_synthetic_experts(
    labels: np.ndarray, specs: Sequence[ExpertSpec], num_classes: int, *, seed: int
) -> np.ndarray:
    """int64 [N, J]: one fixed prediction per example and expert, drawn with ``seed``.

    Expert j is correct with probability p (``p_in`` on its specialty, else ``p_out``); otherwise it
    answers a uniform random class in [0, K) (which may be the right one).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    rng = np.random.default_rng(seed)
    n, num_experts = len(labels), len(specs)
    knows = rng.random((n, num_experts))
    guesses = rng.integers(0, num_classes, size=(n, num_experts))
    out = np.empty((n, num_experts), dtype=np.int64)
    for j, spec in enumerate(specs):
        in_spec = np.isin(labels, sorted(spec.specialty))
        p = np.where(in_spec, spec.p_in, spec.p_out)
        out[:, j] = np.where(knows[:, j] < p, labels, guesses[:, j])
    return out


def sample_vote_annotators(
    vote_probs: np.ndarray,
    num_experts: int,
    *,
    seed: int,
    swap: Sequence[float] | None = None,
    swap_pair: tuple[int, int] = (0, 1),
) -> np.ndarray:
    """int64 [N, J]: each expert draws a class from each example's vote distribution.

    Draws are independent per example and expert, *with* replacement. ``swap[j]`` (default 0) is the
    probability that expert j then swaps the two classes of ``swap_pair`` (hate ↔ offensive).
    """
    vote_probs = np.asarray(vote_probs, dtype=np.float64)
    if vote_probs.ndim != 2 or not np.allclose(vote_probs.sum(1), 1.0):
        raise ValueError("vote_probs must be [N, K] with rows summing to 1")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    swap = [0.0] * num_experts if swap is None else list(swap)
    if len(swap) != num_experts or any(not 0.0 <= q <= 1.0 for q in swap):
        raise ValueError(f"swap must hold {num_experts} probabilities, got {swap}")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(vote_probs, axis=1)
    cdf[:, -1] = 1.0
    u = rng.random((len(vote_probs), num_experts))
    out = np.stack([(u[:, j : j + 1] > cdf).sum(1) for j in range(num_experts)], axis=1)
    a, b = swap_pair
    flip = rng.random(out.shape) < np.asarray(swap)[None, :]
    swapped = np.where(out == a, b, np.where(out == b, a, out))
    return np.where(flip, swapped, out).astype(np.int64)
