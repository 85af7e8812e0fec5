"""Population quantities of multi-expert L2D at a single input x (Liu et al., arXiv 2602.17144).

At a fixed x, the label distribution is η (length K) and the experts' correctness is described by a
joint distribution over Boolean patterns c ∈ {0, 1}^J (``patterns`` [P, J] with probabilities
``probs`` [P]); expert j's accuracy is ``Acc_j = Σ_p probs_p c_pj``.

- Vanilla CE: the conditional risk ``−Σ_y η_y log ψ_y − Σ_j Acc_j log ψ_{K+j}`` is minimised
  by ``ψ* ∝ (η, Acc)``, i.e. ``ψ*_y = η_y / (1 + A)`` with ``A = Σ_j Acc_j``: the label block
  shrinks as experts are added (the paper's underfitting argument).
- PiCCE-CE: for a ranking σ of the experts, ``A_σ^j`` is the probability that j is the first
  correct expert in σ; ``Σ_j A_σ^j = V`` (union coverage, Lemma 4). With that ranking the risk is
  minimised by ``ψ ∝ (η, A_σ)``, so the label block keeps ``1 / (1 + V) ≥ 1/2``. The risk is the
  minimum over rankings, hence continuous but not convex.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "expert_accuracies",
    "first_correct_probs",
    "label_margin",
    "picce_ce_optimum",
    "picce_ce_readout",
    "picce_ce_risk",
    "union_coverage",
    "vanilla_ce_optimum",
    "vanilla_ce_risk",
]


def _check_table(patterns: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    patterns = np.asarray(patterns, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    if patterns.ndim != 2 or probs.shape != (patterns.shape[0],):
        raise ValueError(
            f"patterns must be [P, J] and probs [P], got {patterns.shape} and {probs.shape}"
        )
    if (probs < 0).any() or abs(probs.sum() - 1.0) > 1e-9:
        raise ValueError(f"probs must be a probability vector, got sum {probs.sum()}")
    return patterns, probs


def expert_accuracies(patterns: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Acc_j = P(expert j correct), [J]."""
    patterns, probs = _check_table(patterns, probs)
    return probs @ patterns


def union_coverage(patterns: np.ndarray, probs: np.ndarray) -> float:
    """V = P(at least one expert correct)."""
    patterns, probs = _check_table(patterns, probs)
    return float(probs @ patterns.any(1))


def first_correct_probs(
    patterns: np.ndarray, probs: np.ndarray, order: Sequence[int]
) -> np.ndarray:
    """A_σ^j, indexed by expert j: the probability that j is the first correct expert in ``order``.

    ``order`` lists all J experts, most preferred first. Lemma 4: the entries sum to V ≤ 1.
    """
    patterns, probs = _check_table(patterns, probs)
    num_experts = patterns.shape[1]
    if sorted(order) != list(range(num_experts)):
        raise ValueError(f"order must be a permutation of range({num_experts}), got {list(order)}")
    out = np.zeros(num_experts)
    for pattern, p in zip(patterns, probs):
        for j in order:
            if pattern[j]:
                out[j] += p
                break
    return out


def vanilla_ce_optimum(eta: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """ψ* = (η, Acc) / (1 + Σ Acc), the minimiser of the vanilla CE conditional risk, [K + J]."""
    eta = np.asarray(eta, dtype=np.float64)
    acc = np.asarray(acc, dtype=np.float64)
    if abs(eta.sum() - 1.0) > 1e-9 or (eta < 0).any():
        raise ValueError(f"eta must be a probability vector, got {eta}")
    if ((acc < 0) | (acc > 1)).any():
        raise ValueError(f"accuracies must lie in [0, 1], got {acc}")
    return np.concatenate([eta, acc]) / (1.0 + acc.sum())


def label_margin(eta: np.ndarray, acc: np.ndarray) -> float:
    """Gap between the two largest label entries of the vanilla CE optimum ψ*."""
    psi = vanilla_ce_optimum(eta, acc)[: len(eta)]
    top = np.sort(psi)[::-1]
    return float(top[0] - top[1])


def picce_ce_optimum(
    eta: np.ndarray, patterns: np.ndarray, probs: np.ndarray, order: Sequence[int]
) -> np.ndarray:
    """ψ = (η, A_σ) / (1 + V): the PiCCE-CE risk minimiser among scores that rank experts by σ.

    It is a stationary point of the PiCCE-CE risk when its expert entries are ordered as σ.
    """
    eta = np.asarray(eta, dtype=np.float64)
    a_sigma = first_correct_probs(patterns, probs, order)
    return np.concatenate([eta, a_sigma]) / (1.0 + a_sigma.sum())


def vanilla_ce_risk(scores: Tensor, eta: Tensor, acc: Tensor) -> Tensor:
    """Conditional vanilla CE risk ``−Σ_y η_y log ψ_y − Σ_j Acc_j log ψ_{K+j}``; scores [K + J]."""
    log_psi = torch.log_softmax(scores, dim=-1)
    weights = torch.cat([eta, acc]).to(log_psi)
    return -(weights * log_psi).sum(-1)


def picce_ce_risk(scores: Tensor, eta: Tensor, patterns: Tensor, probs: Tensor) -> Tensor:
    """Conditional PiCCE-CE risk ``−Σ_y η_y log ψ_y − Σ_p probs_p max_{j∈c_p} log ψ_{K+j}``.

    The max over an empty pattern c_p counts as 0.

    ``patterns`` [P, J] bool, ``probs`` [P]; ``scores`` [K + J].
    """
    num_classes = eta.shape[0]
    log_psi = torch.log_softmax(scores, dim=-1)
    label = -(eta.to(log_psi) * log_psi[:num_classes]).sum()
    expert_log = log_psi[num_classes:].expand(patterns.shape[0], -1)
    fill = torch.finfo(log_psi.dtype).min
    best = expert_log.masked_fill(~patterns.bool(), fill).max(dim=1).values
    has = patterns.bool().any(1)
    best = torch.where(has, best, torch.zeros_like(best))
    return label - (probs.to(log_psi) * best).sum()


def picce_ce_readout(scores: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Estimates read off a PiCCE-CE model (spec section 6, from Lemma 5 / Theorem 6).

    At the PiCCE-CE optimum the label block holds ``Σ_{y≤K} ψ_y = 1 / (1 + V)``, so
    ``V̂ = 1 / Σ_{y≤K} ψ_y − 1``, and the top expert's accuracy is ``ψ_{K+j*} / Σ_{y≤K} ψ_y``
    (under Condition 1). The other experts' scores are *not* their accuracies.

    Returns ``union_coverage`` [N], ``top_expert`` [N] (index j*) and ``top_expert_acc`` [N].
    """
    if scores.ndim != 2 or not 2 <= num_classes < scores.shape[1]:
        raise ValueError(
            f"scores must be [N, K + J] with 2 <= K < K + J, got {tuple(scores.shape)}, "
            f"K={num_classes}"
        )
    psi = torch.softmax(scores.double(), dim=1)
    label_mass = psi[:, :num_classes].sum(1)
    top_psi, top = psi[:, num_classes:].max(1)
    return {
        "union_coverage": 1.0 / label_mass - 1.0,
        "top_expert": top,
        "top_expert_acc": top_psi / label_mass,
    }
