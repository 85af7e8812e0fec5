"""Metrics in torch, cross-checked against scikit-learn and fairlearn (test-only dependencies)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nashmoe.fairness.metrics import (
    UndefinedMetricWarning,
    balanced_accuracy,
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
    fairness_report,
    false_positive_rate,
    roc_auc,
    true_positive_rate,
)


def _random(seed: int, n: int = 300, n_groups: int = 3):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    score = torch.rand(n, generator=gen)
    score = torch.where(torch.rand(n, generator=gen) < 0.2, torch.round(score * 10) / 10, score)
    group = torch.randint(0, n_groups, (n,), generator=gen)
    return y, score, group


@pytest.mark.parametrize("seed", range(5))
def test_against_scikit_learn(seed: int) -> None:
    sk = pytest.importorskip("sklearn.metrics")
    y, s, _ = _random(seed)
    pred = (s > 0.5).long()
    assert roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)
    assert balanced_accuracy(y, pred) == pytest.approx(
        sk.balanced_accuracy_score(y.numpy(), pred.numpy()), abs=1e-12
    )
    # Balanced accuracy is the ROC-AUC of the hard predictions (the paper's "AUC").
    assert balanced_accuracy(y, pred) == pytest.approx(roc_auc(y, pred.float()), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_against_fairlearn(seed: int) -> None:
    fm = pytest.importorskip("fairlearn.metrics")
    y, s, g = _random(seed, n_groups=2 + seed % 3)
    pred = (s > 0.5).long()
    yn, pn, gn = y.numpy(), pred.numpy(), g.numpy()
    assert demographic_parity_difference(y, pred, sensitive_features=g) == pytest.approx(
        fm.demographic_parity_difference(yn, pn, sensitive_features=gn), abs=1e-12
    )
    assert equalized_odds_difference(y, pred, sensitive_features=g) == pytest.approx(
        fm.equalized_odds_difference(yn, pn, sensitive_features=gn), abs=1e-12
    )
    frame = fm.MetricFrame(
        metrics={
            "tpr": fm.true_positive_rate,
            "fpr": fm.false_positive_rate,
            "sr": fm.selection_rate,
        },
        y_true=yn,
        y_pred=pn,
        sensitive_features=gn,
    )
    diff = frame.difference(method="between_groups")
    assert equal_opportunity_difference(y, pred, sensitive_features=g) == pytest.approx(
        diff["tpr"], abs=1e-12
    )
    report = fairness_report(y, s, g)
    assert report.overall["demographic_parity_difference"] == pytest.approx(diff["sr"], abs=1e-12)
    assert report.overall["equalized_odds_difference"] == pytest.approx(
        max(diff["tpr"], diff["fpr"]), abs=1e-12
    )
    for k in range(int(g.max()) + 1):
        assert report.by_group[str(k)]["tpr"] == pytest.approx(frame.by_group["tpr"][k], abs=1e-12)
        assert report.by_group[str(k)]["fpr"] == pytest.approx(frame.by_group["fpr"][k], abs=1e-12)


def test_report_gaps_and_worst_group_against_naive_loops() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    y, s, g = _random(7, n_groups=4)
    report = fairness_report(y, s, g, group_names=["a", "b", "c", "d"])
    per_group = []
    for k in range(4):
        m = (g == k).numpy()
        per_group.append(sk.roc_auc_score(y.numpy()[m], s.numpy()[m]))
    assert report.overall["roc_auc_group_gap"] == pytest.approx(max(per_group) - min(per_group))
    assert report.overall["roc_auc_worst_group"] == pytest.approx(min(per_group))
    assert report.worst_group["roc_auc"] == "abcd"[int(np.argmin(per_group))]
    flat = report.flat()
    assert flat["roc_auc[b]"] == pytest.approx(per_group[1])
    assert flat["n[a]"] == float((g == 0).sum())


def test_single_label_group_is_nan_with_a_warning_naming_it() -> None:
    y = torch.tensor([0, 1, 0, 1, 1, 1])
    s = torch.tensor([0.1, 0.8, 0.3, 0.6, 0.9, 0.7])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    with pytest.warns(UndefinedMetricWarning, match="'Amer-Indian'"):
        report = fairness_report(y, s, g, group_names=["White", "Amer-Indian"])
    assert math.isnan(report.by_group["Amer-Indian"]["roc_auc"])
    assert math.isnan(report.by_group["Amer-Indian"]["balanced_accuracy"])
    assert math.isnan(report.by_group["Amer-Indian"]["fpr"])
    assert report.by_group["Amer-Indian"]["tpr"] == 1.0
    # Gap and worst group over the groups where the metric is defined; never 0.5.
    assert report.overall["roc_auc_group_gap"] == 0.0
    assert report.overall["roc_auc_worst_group"] == report.by_group["White"]["roc_auc"]
    with pytest.warns(UndefinedMetricWarning, match="only label 1"):
        assert math.isnan(roc_auc(torch.ones(3), torch.rand(3), group="x"))
    with pytest.warns(UndefinedMetricWarning, match="no positive"):
        assert math.isnan(true_positive_rate(torch.zeros(3), torch.ones(3)))
    with pytest.warns(UndefinedMetricWarning, match="no negative"):
        assert math.isnan(false_positive_rate(torch.ones(3), torch.ones(3)))


def test_ties_count_one_half() -> None:
    assert roc_auc(torch.tensor([0, 1]), torch.tensor([0.5, 0.5])) == 0.5
    assert roc_auc(torch.tensor([0, 0, 1]), torch.tensor([0.2, 0.7, 0.7])) == 0.75


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="binary"):
        roc_auc(torch.tensor([0, 2]), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="length mismatch"):
        balanced_accuracy(torch.tensor([0, 1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(torch.tensor([0, 1]), torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="one-dimensional"):
        roc_auc(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="empty"):
        balanced_accuracy(torch.tensor([]), torch.tensor([]))
    with pytest.raises(ValueError, match="integer group ids"):
        fairness_report(torch.tensor([0, 1]), torch.tensor([0.1, 0.9]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\)"):
        fairness_report(
            torch.tensor([0, 1]), torch.tensor([0.1, 0.9]), torch.tensor([0, 1]), group_names=["a"]
        )
