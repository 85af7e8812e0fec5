"""Deferral metrics with the names of clinicalml/human_ai_deferral (Mozannar et al., AISTATS 2023).

:func:`compute_deferral_metrics` takes the ``test()`` dict (``defers``, ``preds``, ``labels``,
``hum_preds``) and returns ``classifier_all_acc``, ``human_all_acc``, ``coverage``,
``classifier_nondeferred_acc``, ``human_deferred_acc``, ``system_acc`` and ``system_error``.
:func:`compute_multi_expert_metrics` adds the multi-expert quantities (per-expert deferral rates and
accuracy when chosen, the best single expert, union coverage, oracle accuracy).
:func:`compute_coverage_v_acc_curve` sweeps a threshold on ``rej_score``.

All accuracies are fractions in [0, 1]; an accuracy over an empty set is ``nan``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "compute_coverage_v_acc_curve",
    "compute_deferral_metrics",
    "compute_multi_expert_metrics",
    "expert_summary",
]


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else float("nan")


def _arrays(data: Mapping[str, np.ndarray], *keys: str) -> list[np.ndarray]:
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"outputs lack keys {missing}")
    arrs = [np.asarray(data[k]) for k in keys]
    n = len(arrs[0])
    bad = [k for k, a in zip(keys, arrs) if len(a) != n]
    if bad:
        raise ValueError(f"outputs {bad} do not have the length {n} of {keys[0]!r}")
    return arrs


def compute_deferral_metrics(data: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Metrics of a (single- or multi-expert) deferral system.

    ``system prediction = hum_preds if defers else preds``; ``coverage = 1 − mean(defers)`` (the
    fraction predicted by the classifier); ``classifier_all_acc`` is the classifier's accuracy on
    every point (the underfitting measure) and ``human_all_acc`` the deferred-to expert's.
    """
    defers, preds, labels, hum_preds = _arrays(data, "defers", "preds", "labels", "hum_preds")
    d = defers.astype(bool)
    clf_ok = preds == labels
    hum_ok = hum_preds == labels
    system_acc = _mean(np.where(d, hum_ok, clf_ok))
    return {
        "classifier_all_acc": _mean(clf_ok),
        "human_all_acc": _mean(hum_ok),
        "coverage": 1.0 - _mean(d) if d.size else float("nan"),
        "classifier_nondeferred_acc": _mean(clf_ok[~d]),
        "human_deferred_acc": _mean(hum_ok[d]),
        "system_acc": system_acc,
        "system_error": 1.0 - system_acc,
    }


def expert_summary(
    labels: np.ndarray, expert_preds: np.ndarray, expert_mask: np.ndarray | None = None
) -> dict[str, object]:
    """Realised expert statistics: per-expert accuracy, A = Σ_j Acc_j, union coverage V (some expert
    correct), the fraction with every expert correct and with none correct."""
    labels = np.asarray(labels)
    expert_preds = np.asarray(expert_preds)
    if expert_preds.ndim != 2 or len(expert_preds) != len(labels):
        raise ValueError(
            f"expert_preds must be [N, J] with N = {len(labels)}, got {expert_preds.shape}"
        )
    correct = expert_preds == labels[:, None]
    if expert_mask is not None:
        correct &= np.asarray(expert_mask, dtype=bool)
    acc = correct.mean(0) if len(labels) else np.full(expert_preds.shape[1], np.nan)
    return {
        "expert_acc": [float(a) for a in acc],
        "sum_acc": float(acc.sum()),
        "best_expert": int(np.argmax(acc)),
        "best_expert_acc": float(acc.max()),
        "union_coverage": _mean(correct.any(1)),
        "all_correct": _mean(correct.all(1)),
        "none_correct": _mean(~correct.any(1)),
    }


def compute_multi_expert_metrics(data: Mapping[str, np.ndarray]) -> dict[str, object]:
    """:func:`compute_deferral_metrics` plus multi-expert quantities.

    Adds ``defer_rate`` (list over experts: fraction of all points deferred to j),
    ``expert_acc_when_chosen`` (accuracy of j on the points deferred to it; nan if none), the
    reference lines ``best_expert_acc`` (the best single expert on all points), ``union_coverage``
    (some expert correct) and ``oracle_acc`` (the classifier or some expert correct), and
    ``num_experts_used``.
    """
    out: dict[str, object] = dict(compute_deferral_metrics(data))
    defer_to, preds, labels, expert_preds = _arrays(
        data, "defer_to", "preds", "labels", "expert_preds"
    )
    if expert_preds.ndim != 2:
        raise ValueError(f"expert_preds must be [N, J], got shape {expert_preds.shape}")
    num_experts = expert_preds.shape[1]
    correct = expert_preds == labels[:, None]
    rates, accs = [], []
    for j in range(num_experts):
        chosen = defer_to == j
        rates.append(_mean(chosen))
        accs.append(_mean(correct[chosen, j]))
    out["defer_rate"] = rates
    out["expert_acc_when_chosen"] = accs
    out["num_experts_used"] = int(sum(r > 0 for r in rates))
    summary = expert_summary(labels, expert_preds)
    out["best_expert_acc"] = summary["best_expert_acc"]
    out["union_coverage"] = summary["union_coverage"]
    out["oracle_acc"] = _mean(correct.any(1) | (preds == labels))
    return out


def compute_coverage_v_acc_curve(
    data: Mapping[str, np.ndarray],
    *,
    num_quantiles: int = 100,
    thresholds: np.ndarray | None = None,
    include_endpoints: bool = True,
) -> list[dict[str, float]]:
    """Metrics along a threshold sweep on ``rej_score``, as in human_ai_deferral.

    The first entry is the model's own decisions (``defers`` as given). Then, for each threshold q,
    ``defers = rej_score > q`` (the deferred-to expert stays the top-scored one, ``hum_preds``).
    By default the thresholds are ``num_quantiles`` quantiles of the distinct ``rej_score`` values;
    with ``include_endpoints`` one threshold below every score (coverage 0) is added so the curve
    spans coverage 0 to 1 (the largest quantile already gives coverage 1). Each entry carries its
    ``threshold`` (nan for the model's own point).
    """
    (rej,) = _arrays(data, "rej_score", "defers")[:1]
    own = dict(compute_deferral_metrics(data))
    own["threshold"] = float("nan")
    curve = [own]
    if thresholds is None:
        if num_quantiles < 2:
            raise ValueError(f"num_quantiles must be >= 2, got {num_quantiles}")
        distinct = np.unique(rej)
        if distinct.size == 0:
            return curve
        thresholds = np.quantile(distinct, np.linspace(0.0, 1.0, num_quantiles))
        if include_endpoints:
            below = distinct[0] - max(1.0, abs(float(distinct[0])))
            thresholds = np.concatenate([[below], thresholds])
    for q in np.asarray(thresholds, dtype=np.float64):
        point = dict(data)
        point["defers"] = (rej > q).astype(np.int64)
        metrics = compute_deferral_metrics(point)
        metrics["threshold"] = float(q)
        curve.append(metrics)
    return curve
