"""Classification and group-fairness metrics, computed in torch.

Names follow the community's (fairlearn, scikit-learn; see spec conventions.md, section 7 and
fairness.md, section 10):

- ``roc_auc``: score-based ROC-AUC of the predicted probability of label 1 (Mann-Whitney form,
  ties count one half), as ``sklearn.metrics.roc_auc_score``.
- ``balanced_accuracy``: (TPR + TNR) / 2 of the hard predictions, which equals the ROC-AUC of the
  hard predictions. The Nash meta-learning paper (Zeng et al., NeurIPS 2024, arXiv 2406.07029)
  calls this quantity "AUC"; we never do.
- ``demographic_parity_difference``: max_g P(ŷ=1 | g) − min_g P(ŷ=1 | g), fairlearn's definition
  (``method="between_groups"``); unsigned.
- ``equalized_odds_difference``: the larger of the between-group TPR difference and FPR difference,
  fairlearn's definition with its default worst-case aggregation; unsigned.
- ``equal_opportunity_difference``: max_g TPR_g − min_g TPR_g, **unsigned**. AIF360's metric of the
  same name is signed (unprivileged − privileged); ours is not.
- ``*_group_gap``: max_g − min_g of a per-group metric (the paper's "Max-gAUCD" for
  ``balanced_accuracy``); ``*_worst_group``: min_g (the paper's "Worst-gAUC").

A quantity that is undefined for a group (ROC-AUC or balanced accuracy of a group with a single
label, TPR of a group without positives, FPR of a group without negatives) is NaN, with an
:class:`UndefinedMetricWarning` naming the group, never 0.5 or 0. Gaps and worst groups are taken
over the groups where the metric is defined (NaN if none is).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "FairnessReport",
    "UndefinedMetricWarning",
    "balanced_accuracy",
    "demographic_parity_difference",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "fairness_report",
    "false_positive_rate",
    "roc_auc",
    "selection_rate",
    "true_positive_rate",
]


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for a group (e.g. ROC-AUC of a group holding a single label)."""


def _as_1d(name: str, values: Tensor | Sequence[float]) -> Tensor:
    t = torch.as_tensor(values)
    if t.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(t.shape)}")
    return t.detach().cpu()


def _labels(name: str, values: Tensor | Sequence[int]) -> Tensor:
    t = _as_1d(name, values)
    if t.dtype == torch.bool:
        return t
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    bad = (t != 0) & (t != 1)
    if bool(bad.any()):
        values = torch.unique(t[bad])[:5].tolist()
        raise ValueError(f"{name} must be binary (0/1), got values {values}")
    return t != 0


def _check_lengths(**tensors: Tensor) -> int:
    lengths = {k: int(v.shape[0]) for k, v in tensors.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"length mismatch: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"empty input: {', '.join(lengths)} have no elements")
    return n


def _warn(message: str) -> None:
    warnings.warn(message, UndefinedMetricWarning, stacklevel=3)


def _where(group: str | None) -> str:
    return f" for group {group!r}" if group is not None else ""


def roc_auc(y_true: Tensor, y_score: Tensor, *, group: str | None = None) -> float:
    """Score-based ROC-AUC (probability that a random positive outranks a random negative).

    Ties between a positive and a negative count one half, as in ``sklearn.metrics.roc_auc_score``.
    NaN with an :class:`UndefinedMetricWarning` when ``y_true`` holds a single label (``group`` is
    named in the warning).
    """
    y = _labels("y_true", y_true)
    s = _as_1d("y_score", y_score).double()
    _check_lengths(y_true=y, y_score=s)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("y_score contains NaN or inf")
    n_pos = int(y.sum())
    n_neg = int(y.numel()) - n_pos
    if n_pos == 0 or n_neg == 0:
        label = 1 if n_neg == 0 else 0
        _warn(f"ROC-AUC is undefined{_where(group)}: only label {label} is present; returning NaN")
        return math.nan
    order = torch.argsort(s)
    sorted_s = s[order]
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie block
    ranks = torch.empty_like(s)
    ranks[order] = avg_rank[inverse]
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _rate(numer: Tensor, denom: Tensor) -> float:
    d = int(denom.sum())
    return math.nan if d == 0 else int((numer & denom).sum()) / d


def true_positive_rate(y_true: Tensor, y_pred: Tensor, *, group: str | None = None) -> float:
    """P(ŷ = 1 | y = 1); NaN with a warning when there is no positive."""
    y, p = _labels("y_true", y_true), _labels("y_pred", y_pred)
    _check_lengths(y_true=y, y_pred=p)
    if not bool(y.any()):
        _warn(f"true positive rate is undefined{_where(group)}: no positive example; NaN")
        return math.nan
    return _rate(p, y)


def false_positive_rate(y_true: Tensor, y_pred: Tensor, *, group: str | None = None) -> float:
    """P(ŷ = 1 | y = 0); NaN with a warning when there is no negative."""
    y, p = _labels("y_true", y_true), _labels("y_pred", y_pred)
    _check_lengths(y_true=y, y_pred=p)
    if bool(y.all()):
        _warn(f"false positive rate is undefined{_where(group)}: no negative example; NaN")
        return math.nan
    return _rate(p, ~y)


def selection_rate(y_pred: Tensor) -> float:
    """P(ŷ = 1)."""
    p = _labels("y_pred", y_pred)
    if p.numel() == 0:
        raise ValueError("empty input: y_pred has no elements")
    return float(p.double().mean())


def balanced_accuracy(y_true: Tensor, y_pred: Tensor, *, group: str | None = None) -> float:
    """(TPR + TNR) / 2 of hard predictions; equals the ROC-AUC of the hard predictions.

    NaN with an :class:`UndefinedMetricWarning` when ``y_true`` holds a single label (scikit-learn
    instead averages the recall of the classes present; we keep it undefined, like ROC-AUC).
    """
    y, p = _labels("y_true", y_true), _labels("y_pred", y_pred)
    _check_lengths(y_true=y, y_pred=p)
    if bool(y.all()) or not bool(y.any()):
        label = 1 if bool(y.all()) else 0
        _warn(f"balanced accuracy is undefined{_where(group)}: only label {label}; NaN")
        return math.nan
    tpr = _rate(p, y)
    tnr = _rate(~p, ~y)
    return 0.5 * (tpr + tnr)


def _group_ids(sensitive_features: Tensor | Sequence, n: int) -> tuple[Tensor, list]:
    """Integer codes for the groups and their sorted distinct values."""
    if isinstance(sensitive_features, Tensor):
        sf = sensitive_features.detach().cpu()
        if sf.ndim != 1:
            raise ValueError(f"sensitive_features must be one-dimensional, got {tuple(sf.shape)}")
        values, codes = torch.unique(sf, return_inverse=True)
        keys = values.tolist()
    else:
        seq = list(sensitive_features)
        keys = sorted(set(seq), key=str)
        index = {k: i for i, k in enumerate(keys)}
        codes = torch.tensor([index[v] for v in seq], dtype=torch.int64)
    if codes.shape[0] != n:
        raise ValueError(f"length mismatch: sensitive_features has {codes.shape[0]}, labels {n}")
    return codes, keys


def _between_groups(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return max(defined) - min(defined) if defined else math.nan


def _per_group(fn, y: Tensor, p: Tensor, codes: Tensor, keys: list) -> list[float]:
    return [fn(y[codes == i], p[codes == i], group=str(k)) for i, k in enumerate(keys)]


def demographic_parity_difference(
    y_true: Tensor, y_pred: Tensor, *, sensitive_features: Tensor | Sequence
) -> float:
    """max_g P(ŷ=1 | g) − min_g P(ŷ=1 | g) (fairlearn's definition, ``between_groups``; ≥ 0).

    ``y_true`` is unused (kept for fairlearn's signature) but must have the same length.
    """
    y, p = _labels("y_true", y_true), _labels("y_pred", y_pred)
    n = _check_lengths(y_true=y, y_pred=p)
    codes, keys = _group_ids(sensitive_features, n)
    return _between_groups([selection_rate(p[codes == i]) for i in range(len(keys))])


def equalized_odds_difference(
    y_true: Tensor, y_pred: Tensor, *, sensitive_features: Tensor | Sequence
) -> float:
    """max(TPR difference, FPR difference) between groups (fairlearn's worst-case definition).

    Each difference is max_g − min_g over the groups where the rate is defined (≥ 0).
    """
    y, p = _labels("y_true", y_true), _labels("y_pred", y_pred)
    n = _check_lengths(y_true=y, y_pred=p)
    codes, keys = _group_ids(sensitive_features, n)
    tpr = _between_groups(_per_group(true_positive_rate, y, p, codes, keys))
    fpr = _between_groups(_per_group(false_positive_rate, y, p, codes, keys))
    return max(tpr, fpr) if not (math.isnan(tpr) or math.isnan(fpr)) else math.nan


def equal_opportunity_difference(
    y_true: Tensor, y_pred: Tensor, *, sensitive_features: Tensor | Sequence
) -> float:
    """max_g TPR_g − min_g TPR_g, **unsigned** (AIF360's metric of this name is signed:
    unprivileged − privileged)."""
    y, p = _labels("y_true", y_true), _labels("y_pred", y_pred)
    n = _check_lengths(y_true=y, y_pred=p)
    codes, keys = _group_ids(sensitive_features, n)
    return _between_groups(_per_group(true_positive_rate, y, p, codes, keys))


_GROUP_METRICS = ("roc_auc", "balanced_accuracy", "selection_rate", "tpr", "fpr", "accuracy")


@dataclass(frozen=True)
class FairnessReport:
    """A MetricFrame-like report: overall metrics, metrics by group, group sizes.

    ``overall`` holds the scalar metrics under their community names (see the module docstring);
    ``by_group[name]`` holds ``roc_auc``, ``balanced_accuracy``, ``selection_rate``, ``tpr``,
    ``fpr``, ``accuracy`` and ``n`` (size) for each group.
    """

    overall: dict[str, float]
    by_group: dict[str, dict[str, float]]
    group_names: tuple[str, ...]
    worst_group: dict[str, str] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """Overall metrics plus ``"<metric>[<group>]"`` entries, for logging."""
        out = dict(self.overall)
        for g, metrics in self.by_group.items():
            for k, v in metrics.items():
                out[f"{k}[{g}]"] = v
        return out


def fairness_report(
    y_true: Tensor,
    y_score: Tensor,
    sensitive_features: Tensor,
    *,
    group_names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> FairnessReport:
    """All metrics of fairness.md, section 10, from scores ``s = P(y=1)`` and integer group ids.

    Args:
        y_true: labels {0, 1}, shape [N].
        y_score: predicted probability of label 1, shape [N]; ŷ = (s > threshold), which for two
            logits equals their argmax when ``threshold=0.5``.
        sensitive_features: integer group ids in ``[0, len(group_names))``, shape [N].
        group_names: display names of the groups (default ``"0"``, ``"1"``, ...). Groups absent
            from the input are left out of the report.
    """
    y = _labels("y_true", y_true)
    s = _as_1d("y_score", y_score).double()
    g = _as_1d("sensitive_features", sensitive_features)
    _check_lengths(y_true=y, y_score=s, sensitive_features=g)
    if g.is_floating_point():
        raise ValueError("sensitive_features must hold integer group ids")
    g = g.long()
    n_groups = int(g.max()) + 1
    if group_names is None:
        group_names = [str(i) for i in range(n_groups)]
    if int(g.min()) < 0 or n_groups > len(group_names):
        raise ValueError(
            f"sensitive_features must lie in [0, {len(group_names)}), got [{int(g.min())}, "
            f"{n_groups - 1}]"
        )
    p = s > threshold
    overall = {
        "roc_auc": roc_auc(y, s),
        "balanced_accuracy": balanced_accuracy(y, p),
        "accuracy": float((p == y).double().mean()),
        "selection_rate": selection_rate(p),
    }
    by_group: dict[str, dict[str, float]] = {}
    for i, name in enumerate(group_names):
        m = g == i
        if not bool(m.any()):
            continue
        yi, si, pi = y[m], s[m], p[m]
        by_group[str(name)] = {
            "n": float(m.sum()),
            "roc_auc": roc_auc(yi, si, group=str(name)),
            "balanced_accuracy": balanced_accuracy(yi, pi, group=str(name)),
            "selection_rate": selection_rate(pi),
            "tpr": true_positive_rate(yi, pi, group=str(name)),
            "fpr": false_positive_rate(yi, pi, group=str(name)),
            "accuracy": float((pi == yi).double().mean()),
        }
    worst: dict[str, str] = {}
    for metric in ("roc_auc", "balanced_accuracy"):
        vals = {k: v[metric] for k, v in by_group.items() if not math.isnan(v[metric])}
        overall[f"{metric}_group_gap"] = _between_groups(list(vals.values()))
        overall[f"{metric}_worst_group"] = min(vals.values()) if vals else math.nan
        if vals:
            worst[metric] = min(vals, key=vals.__getitem__)
    sr = [v["selection_rate"] for v in by_group.values()]
    tprs = [v["tpr"] for v in by_group.values()]
    fprs = [v["fpr"] for v in by_group.values()]
    overall["demographic_parity_difference"] = _between_groups(sr)
    tpr_d, fpr_d = _between_groups(tprs), _between_groups(fprs)
    overall["equal_opportunity_difference"] = tpr_d
    overall["equalized_odds_difference"] = (
        max(tpr_d, fpr_d) if not (math.isnan(tpr_d) or math.isnan(fpr_d)) else math.nan
    )
    return FairnessReport(
        overall=overall,
        by_group=by_group,
        group_names=tuple(str(n) for n in group_names),
        worst_group=worst,
    )
