"""Multi-expert learning-to-defer surrogates over K + J scores, vectorised over the batch.

Every loss takes ``scores`` [B, K + J] (K class logits, then J expert logits), ``labels`` [B] and
``expert_preds`` [B, J] and returns the mean over the batch (or per-example values).

- :func:`multi_expert_ce`: the softmax surrogate of Mozannar & Sontag (ICML 2020) extended to J
  experts by Verma, Barrejón & Nalisnick (AISTATS 2023): ``−log ψ_y − Σ_j 1[m_j = y] log ψ_{K+j}``.
- :func:`multi_expert_ova`: the one-vs-all surrogate (Verma & Nalisnick, ICML 2022; multi-expert
  form in Verma et al. 2023).
- :func:`picce_ce`, :func:`picce_ova`: PiCCE, "Pick the Confident and Correct Expert" (Liu, Cao,
  Feng, An, Ong, "When More Experts Hurt: Underfitting in Multi-Expert Learning to Defer",
  arXiv 2602.17144): among the correct experts, only the highest-scoring one is treated as "the"
  expert of a single-expert surrogate. The choice uses the current scores and carries no gradient.

Optional ``expert_mask`` [B, J] (bool) marks which experts labelled each example: a missing expert
is never correct and contributes no OvA term. Optional ``weights`` [B] weight the examples (the
mean is then ``Σ w_i L_i / Σ w_i``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOSSES",
    "LossFn",
    "correct_mask",
    "loss_family",
    "multi_expert_ce",
    "multi_expert_ova",
    "picce_ce",
    "picce_ova",
]

LossFn = Callable[..., Tensor]


def _check(
    scores: Tensor, labels: Tensor, expert_preds: Tensor, expert_mask: Tensor | None
) -> tuple[int, int]:
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, K + J], got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    if expert_preds.ndim != 2 or expert_preds.shape[0] != scores.shape[0]:
        raise ValueError(
            f"expert_preds must be [B, J] with B = {scores.shape[0]}, "
            f"got {tuple(expert_preds.shape)}"
        )
    if labels.shape != (scores.shape[0],):
        raise ValueError(
            f"labels must be [B] with B = {scores.shape[0]}, got {tuple(labels.shape)}"
        )
    num_experts = expert_preds.shape[1]
    num_classes = scores.shape[1] - num_experts
    if num_experts < 1 or num_classes < 2:
        raise ValueError(
            f"scores have {scores.shape[1]} columns for {num_experts} experts: need J >= 1 experts "
            "and K >= 2 classes"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    if expert_mask is not None and expert_mask.shape != expert_preds.shape:
        raise ValueError(
            f"expert_mask must have the shape of expert_preds {tuple(expert_preds.shape)}, "
            f"got {tuple(expert_mask.shape)}"
        )
    return num_classes, num_experts


def correct_mask(labels: Tensor, expert_preds: Tensor, expert_mask: Tensor | None = None) -> Tensor:
    """Bool [B, J]: expert j labelled example i and got it right (the correct set C)."""
    correct = expert_preds == labels[:, None]
    if expert_mask is not None:
        correct = correct & expert_mask.bool()
    return correct


def _reduce(per_example: Tensor, weights: Tensor | None, reduction: str) -> Tensor:
    if weights is not None:
        if weights.shape != per_example.shape:
            raise ValueError(
                f"weights must be [B] = {tuple(per_example.shape)}, got {tuple(weights.shape)}"
            )
        per_example = per_example * weights
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return per_example.sum()
    if reduction == "mean":
        if weights is None:
            return per_example.mean()
        return per_example.sum() / weights.sum().clamp_min(torch.finfo(per_example.dtype).tiny)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _selected_expert_logit(expert_scores: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    """max_{j ∈ C} θ_{K+j} (0 where C is empty) and the has-correct flag; finite fill, no inf·0."""
    fill = torch.finfo(expert_scores.dtype).min
    masked = expert_scores.masked_fill(~correct, fill)
    best = masked.max(dim=1).values
    has_correct = correct.any(dim=1)
    return torch.where(has_correct, best, torch.zeros_like(best)), has_correct


def multi_expert_ce(
    scores: Tensor,
    labels: Tensor,
    expert_preds: Tensor,
    *,
    expert_mask: Tensor | None = None,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Multi-expert softmax cross-entropy: ``−log ψ_y − Σ_j 1[m_j = y]·log ψ_{K+j}``.

    ψ is the softmax over all K + J scores. Verma, Barrejón & Nalisnick (AISTATS 2023), extending
    Mozannar & Sontag (ICML 2020). Each correct expert adds ``LSE − θ_{K+j}``.
    """
    num_classes, _ = _check(scores, labels, expert_preds, expert_mask)
    correct = correct_mask(labels, expert_preds, expert_mask)
    log_psi = torch.log_softmax(scores, dim=1)
    label_term = -log_psi.gather(1, labels[:, None]).squeeze(1)
    expert_term = -(log_psi[:, num_classes:] * correct.to(log_psi.dtype)).sum(dim=1)
    return _reduce(label_term + expert_term, weights, reduction)


def _ova_class_terms(class_scores: Tensor, labels: Tensor) -> Tensor:
    """φ(θ_y) + Σ_{k≠y} φ(−θ_k) with φ(z) = softplus(−z)."""
    onehot = F.one_hot(labels, class_scores.shape[1]).to(class_scores.dtype)
    signed = torch.where(onehot.bool(), class_scores, -class_scores)
    return F.softplus(-signed).sum(dim=1)


def multi_expert_ova(
    scores: Tensor,
    labels: Tensor,
    expert_preds: Tensor,
    *,
    expert_mask: Tensor | None = None,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Multi-expert one-vs-all surrogate with the logistic loss φ(z) = log(1 + e^{−z}).

    ``φ(θ_y) + Σ_{k≤K, k≠y} φ(−θ_k) + Σ_j [1[m_j = y] φ(θ_{K+j}) + 1[m_j ≠ y] φ(−θ_{K+j})]``
    (Verma & Nalisnick, ICML 2022; Verma et al., AISTATS 2023). A masked-out expert adds nothing.
    """
    num_classes, _ = _check(scores, labels, expert_preds, expert_mask)
    correct = correct_mask(labels, expert_preds, expert_mask)
    class_term = _ova_class_terms(scores[:, :num_classes], labels)
    expert_scores = scores[:, num_classes:]
    signed = torch.where(correct, expert_scores, -expert_scores)
    expert_term = F.softplus(-signed)
    if expert_mask is not None:
        expert_term = expert_term * expert_mask.to(expert_term.dtype)
    return _reduce(class_term + expert_term.sum(dim=1), weights, reduction)


def picce_ce(
    scores: Tensor,
    labels: Tensor,
    expert_preds: Tensor,
    *,
    expert_mask: Tensor | None = None,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """PiCCE-CE: ``(LSE − θ_y) + 1[C ≠ ∅]·(LSE − max_{j∈C} θ_{K+j})`` (Liu et al. 2026).

    Equivalently ``−log ψ_y + min_{j∈C} (−log ψ_{K+j})``: a minimum of continuous functions, so the
    loss is continuous in the scores at ties. The gradient reaches only the selected expert's logit.
    """
    num_classes, _ = _check(scores, labels, expert_preds, expert_mask)
    correct = correct_mask(labels, expert_preds, expert_mask)
    lse = torch.logsumexp(scores, dim=1)
    label_term = lse - scores.gather(1, labels[:, None]).squeeze(1)
    best, has_correct = _selected_expert_logit(scores[:, num_classes:], correct)
    expert_term = torch.where(has_correct, lse - best, torch.zeros_like(lse))
    return _reduce(label_term + expert_term, weights, reduction)


def picce_ova(
    scores: Tensor,
    labels: Tensor,
    expert_preds: Tensor,
    *,
    expert_mask: Tensor | None = None,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """PiCCE-OvA (Liu et al., arXiv 2602.17144).

    ``φ(θ_y) + Σ_{k≤K,k≠y} φ(−θ_k) + Σ_{j≠ĵ} φ(−θ_{K+j}) + 1[C≠∅]·φ(θ_{K+ĵ})`` where ĵ is the
    highest-scoring correct expert: correct non-selected experts are pushed down like wrong ones.
    Computed as ``Σ_{a≠y} softplus(θ_a) + softplus(−θ_y) − 1[C≠∅]·max_{j∈C} θ_{K+j}`` (sum over the
    present experts), using φ(z) − φ(−z) = −z.
    """
    num_classes, _ = _check(scores, labels, expert_preds, expert_mask)
    correct = correct_mask(labels, expert_preds, expert_mask)
    class_term = _ova_class_terms(scores[:, :num_classes], labels)
    expert_scores = scores[:, num_classes:]
    down = F.softplus(expert_scores)  # φ(−θ) for every expert
    if expert_mask is not None:
        down = down * expert_mask.to(down.dtype)
    best, _ = _selected_expert_logit(expert_scores, correct)  # 0 where C is empty
    return _reduce(class_term + down.sum(dim=1) - best, weights, reduction)


LOSSES: dict[str, LossFn] = {
    "ce": multi_expert_ce,
    "ova": multi_expert_ova,
    "picce_ce": picce_ce,
    "picce_ova": picce_ova,
}


def loss_family(name: str) -> str:
    """``"ce"`` (softmax scores) or ``"ova"`` (sigmoid scores) for a loss name in :data:`LOSSES`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return "ova" if name.endswith("ova") else "ce"
