"""The deferral decision rule and the outputs of a multi-expert L2D model.

Decision rule (Mozannar & Sontag, ICML 2020; multi-expert: Verma et al., AISTATS 2023; Liu et al.,
arXiv 2602.17144): ``a = argmax`` over all K + J scores; if ``a < K`` predict class ``a``, otherwise
defer to expert ``a − K``. Ties: the first index wins (``torch.argmax``), so the classifier wins a
tie against an expert and the lower-index expert wins among experts.

:func:`deferral_outputs` returns the keys of clinicalml/human_ai_deferral's ``test()`` (``defers``,
``preds``, ``labels``, ``hum_preds``, ``rej_score``, ``class_probs``) plus ``defer_to`` and
``expert_preds``, so that its metric formulas hold unchanged with the top-scored expert as "the
human".
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["class_probabilities", "decide", "deferral_outputs", "rejection_score"]


def _check_family(family: str) -> None:
    if family not in ("ce", "ova"):
        raise ValueError(f"family must be 'ce' (softmax) or 'ova' (sigmoid), got {family!r}")


def _split(scores: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    if scores.ndim != 2:
        raise ValueError(f"scores must be [N, K + J], got shape {tuple(scores.shape)}")
    if not 2 <= num_classes < scores.shape[1]:
        raise ValueError(
            f"num_classes={num_classes} must be >= 2 and leave at least one expert column in "
            f"{scores.shape[1]} scores"
        )
    return scores[:, :num_classes], scores[:, num_classes:]


def decide(scores: Tensor, num_classes: int) -> Tensor:
    """int64 [N]: −1 where the classifier predicts, else the index j of the expert deferred to."""
    _split(scores, num_classes)
    a = scores.argmax(dim=1)
    return torch.where(a < num_classes, torch.full_like(a, -1), a - num_classes)


def class_probabilities(scores: Tensor, num_classes: int, family: str) -> Tensor:
    """[N, K] class probability estimates.

    CE family: the first K entries of the softmax over all K + J scores, renormalised to sum to 1
    (= softmax of the first K logits). OvA family: ``sigmoid(θ_k)``, *not* normalised.
    """
    _check_family(family)
    class_scores, _ = _split(scores, num_classes)
    if family == "ce":
        return torch.softmax(class_scores, dim=1)
    return torch.sigmoid(class_scores)


def rejection_score(scores: Tensor, num_classes: int, family: str) -> Tensor:
    """[N] ``max_j ψ_{K+j} − max_k ψ_k`` (sigmoids for OvA), computed in float64.

    ``rejection_score > 0`` reproduces the argmax rule, up to float64 rounding of near-equal logits.
    """
    _check_family(family)
    s = scores.double()
    if family == "ce":
        p = torch.softmax(s, dim=1)
    else:
        p = torch.sigmoid(s)
    return p[:, num_classes:].max(dim=1).values - p[:, :num_classes].max(dim=1).values


@torch.no_grad()
def deferral_outputs(
    scores: Tensor,
    labels: Tensor,
    expert_preds: Tensor,
    *,
    num_classes: int,
    family: str,
) -> dict[str, np.ndarray]:
    """The ``test()`` dict for one set of scores.

    Returns numpy arrays:
        ``defers`` int64 [N] (1 = deferred), ``defer_to`` int64 [N] (−1 = classifier, else j),
        ``preds`` [N] (argmax of the K class scores, every point), ``labels`` [N], ``hum_preds`` [N]
        (the prediction of the top-scored expert argmax_j θ_{K+j}, every point), ``expert_preds``
        [N, J], ``rej_score`` float64 [N] and ``class_probs`` float32 [N, K].
    """
    class_scores, expert_scores = _split(scores, num_classes)
    if expert_preds.shape != expert_scores.shape:
        raise ValueError(
            f"expert_preds must be [N, J] = {tuple(expert_scores.shape)}, "
            f"got {tuple(expert_preds.shape)}"
        )
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels must be [N] = ({scores.shape[0]},), got {tuple(labels.shape)}")
    defer_to = decide(scores, num_classes)
    top_expert = expert_scores.argmax(dim=1)
    hum_preds = expert_preds.gather(1, top_expert[:, None]).squeeze(1)
    return {
        "defers": (defer_to >= 0).long().cpu().numpy(),
        "defer_to": defer_to.cpu().numpy(),
        "preds": class_scores.argmax(dim=1).cpu().numpy(),
        "labels": labels.long().cpu().numpy(),
        "hum_preds": hum_preds.long().cpu().numpy(),
        "expert_preds": expert_preds.long().cpu().numpy(),
        "rej_score": rejection_score(scores, num_classes, family).cpu().numpy(),
        "class_probs": class_probabilities(scores, num_classes, family).float().cpu().numpy(),
    }
