"""Decision rule, test() outputs, deferral metrics and the coverage–accuracy curve."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nashmoe.defer.decision import (
    class_probabilities,
    decide,
    deferral_outputs,
    rejection_score,
)
from nashmoe.defer.metrics import (
    compute_coverage_v_acc_curve,
    compute_deferral_metrics,
    compute_multi_expert_metrics,
    expert_summary,
)

K = 3
# Hand-made batch: K = 3 classes, J = 2 experts.
SCORES = torch.tensor(
    [
        [3.0, 0.0, 0.0, 1.0, 2.0],  # classifier predicts 0
        [0.0, 1.0, 0.0, 4.0, 2.0],  # defer to expert 0
        [0.0, 0.0, 1.0, 2.0, 5.0],  # defer to expert 1
        [2.0, 0.0, 0.0, 2.0, 2.0],  # three-way tie: classifier wins (first index)
        [0.0, 1.0, 0.0, 3.0, 3.0],  # expert tie: expert 0 wins
        [0.0, 2.0, 0.0, 1.0, 1.5],  # classifier predicts 1
    ]
)
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])
EXPERTS = torch.tensor([[1, 0], [1, 2], [0, 0], [0, 1], [1, 1], [2, 2]])


def test_decision_rule_and_ties() -> None:
    assert decide(SCORES, K).tolist() == [-1, 0, 1, -1, 0, -1]


def test_outputs_on_hand_made_batch() -> None:
    out = deferral_outputs(SCORES, LABELS, EXPERTS, num_classes=K, family="ce")
    assert set(out) == {
        "defers",
        "defer_to",
        "preds",
        "labels",
        "hum_preds",
        "expert_preds",
        "rej_score",
        "class_probs",
    }
    assert out["defers"].tolist() == [0, 1, 1, 0, 1, 0]
    assert out["defer_to"].tolist() == [-1, 0, 1, -1, 0, -1]
    assert out["preds"].tolist() == [0, 1, 2, 0, 1, 1]
    # hum_preds: the top-scored expert's prediction on every point (ties -> lower index).
    assert out["hum_preds"].tolist() == [0, 1, 0, 0, 1, 2]
    np.testing.assert_array_equal(out["expert_preds"], EXPERTS.numpy())
    np.testing.assert_allclose(out["class_probs"].sum(1), 1.0, rtol=1e-6)
    psi = torch.softmax(SCORES.double(), 1).numpy()
    np.testing.assert_allclose(out["rej_score"], psi[:, 3:].max(1) - psi[:, :3].max(1))
    assert ((out["rej_score"] > 0) == out["defers"].astype(bool)).all()
    m = compute_multi_expert_metrics(out)
    # System predictions: [0, 1(exp0), 0(exp1: wrong), 0, 1(exp0), 1(clf: wrong)] -> 4/6.
    assert m["system_acc"] == pytest.approx(4 / 6)
    assert m["system_error"] == pytest.approx(2 / 6)
    assert m["coverage"] == pytest.approx(0.5)
    assert m["classifier_all_acc"] == pytest.approx(5 / 6)
    assert m["classifier_nondeferred_acc"] == pytest.approx(2 / 3)
    assert m["human_deferred_acc"] == pytest.approx(2 / 3)
    assert m["human_all_acc"] == pytest.approx(5 / 6)  # hum_preds right except on row 2
    assert m["defer_rate"] == pytest.approx([2 / 6, 1 / 6])
    assert m["expert_acc_when_chosen"] == pytest.approx([1.0, 0.0])
    assert m["num_experts_used"] == 2
    # Expert 0 is right on rows 1, 3, 4, 5 and expert 1 on rows 0, 4, 5; nobody on row 2.
    assert m["best_expert_acc"] == pytest.approx(4 / 6)
    assert m["union_coverage"] == pytest.approx(5 / 6)
    assert m["oracle_acc"] == pytest.approx(1.0)


def test_ova_outputs() -> None:
    out = deferral_outputs(SCORES, LABELS, EXPERTS, num_classes=K, family="ova")
    sig = torch.sigmoid(SCORES.double()).numpy()
    np.testing.assert_allclose(out["class_probs"], sig[:, :3], rtol=1e-6)
    np.testing.assert_allclose(out["rej_score"], sig[:, 3:].max(1) - sig[:, :3].max(1))


@pytest.mark.parametrize("family", ["ce", "ova"])
def test_rejection_score_reproduces_argmax(family: str) -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(500, 7, generator=g) * 3
    defers = decide(scores, 4) >= 0
    assert torch.equal(rejection_score(scores, 4, family) > 0, defers)


def test_system_acc_formula_equals_direct_computation() -> None:
    rng = np.random.default_rng(0)
    n = 300
    data = {
        "defers": rng.integers(0, 2, n),
        "preds": rng.integers(0, 4, n),
        "labels": rng.integers(0, 4, n),
        "hum_preds": rng.integers(0, 4, n),
    }
    m = compute_deferral_metrics(data)
    d = data["defers"] == 1
    cov = 1 - d.mean()
    # human_ai_deferral's formula: coverage·acc_nondeferred + (1 − coverage)·acc_deferred.
    formula = cov * m["classifier_nondeferred_acc"] + (1 - cov) * m["human_deferred_acc"]
    direct = np.mean(
        [
            (data["hum_preds"][i] if d[i] else data["preds"][i]) == data["labels"][i]
            for i in range(n)
        ]
    )
    assert m["system_acc"] == pytest.approx(direct)
    assert formula == pytest.approx(direct)


def test_coverage_curve_endpoints() -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(200, 6, generator=g)
    labels = torch.randint(0, 4, (200,), generator=g)
    experts = torch.randint(0, 4, (200, 2), generator=g)
    out = deferral_outputs(scores, labels, experts, num_classes=4, family="ce")
    m = compute_deferral_metrics(out)
    curve = compute_coverage_v_acc_curve(out)
    assert curve[0]["system_acc"] == m["system_acc"] and np.isnan(curve[0]["threshold"])
    assert len(curve) == 1 + 1 + 100
    hi, lo = out["rej_score"].max() + 1, out["rej_score"].min() - 1
    top, bottom = compute_coverage_v_acc_curve(out, thresholds=np.array([hi, lo]))[1:]
    assert top["coverage"] == 1.0
    assert top["system_acc"] == pytest.approx(m["classifier_all_acc"])
    assert bottom["coverage"] == 0.0
    assert bottom["system_acc"] == pytest.approx(m["human_all_acc"])
    covs = [p["coverage"] for p in curve[1:]]
    assert covs[0] == 0.0 and covs[-1] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(covs))  # thresholds increase -> coverage rises


def test_expert_summary() -> None:
    labels = np.array([0, 1, 2, 0])
    preds = np.array([[0, 1], [1, 1], [0, 0], [1, 2]])
    s = expert_summary(labels, preds)
    assert s["expert_acc"] == pytest.approx([0.5, 0.25])
    assert s["sum_acc"] == pytest.approx(0.75)
    assert s["union_coverage"] == pytest.approx(0.5)
    assert s["all_correct"] == pytest.approx(0.25)
    assert s["none_correct"] == pytest.approx(0.5)
    assert s["best_expert"] == 0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="family"):
        class_probabilities(SCORES, K, "softmax")
    with pytest.raises(ValueError, match="num_classes"):
        decide(SCORES, 5)
    with pytest.raises(ValueError, match="expert_preds"):
        deferral_outputs(SCORES, LABELS, EXPERTS[:, :1], num_classes=K, family="ce")
    with pytest.raises(ValueError, match="lack keys"):
        compute_deferral_metrics({"defers": np.zeros(2)})
    with pytest.raises(ValueError, match="length"):
        compute_deferral_metrics(
            {
                "defers": np.zeros(2),
                "preds": np.zeros(3),
                "labels": np.zeros(2),
                "hum_preds": np.zeros(2),
            }
        )
    empty = {k: np.zeros(0, dtype=np.int64) for k in ("defers", "preds", "labels", "hum_preds")}
    assert np.isnan(compute_deferral_metrics(empty)["system_acc"])
