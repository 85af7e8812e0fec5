"""The training loop: fallback for every Nash method, stage boundary, baselines, selection."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from nashmoe.fairness.bargain import BargainResult
from nashmoe.fairness.metrics import UndefinedMetricWarning
from nashmoe.fairness.trainer import FairTrainConfig, config_for, select_epoch, train_fair


def _cfg(method: str, **kw) -> FairTrainConfig:
    base = {"epochs": 3, "bargain_epochs": 2, "batch_size": 32, "lr": 0.05, "dropout": 0.1}
    base.update(kw)
    return FairTrainConfig(method=method, **base)


def _train(ds, cfg, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return train_fair(ds, cfg, **kw)


def _always_fail(g: torch.Tensor) -> BargainResult:
    n = g.shape[0]
    return BargainResult(
        torch.full((n,), 1.0 / n, dtype=torch.float64), "infeasible", 0, math.nan, "forced"
    )


@pytest.mark.parametrize("objective", ["ltr", "forml", "meta-gdro"])
def test_failed_bargaining_reproduces_the_one_stage_method(tiny_dataset, objective) -> None:
    """With every bargain failing, Nash-X must take exactly X's steps (current-batch fallback)."""
    nash = _train(
        tiny_dataset, _cfg(f"nash-{objective}"), bargainer=_always_fail, test_every_epoch=True
    )
    plain = _train(tiny_dataset, _cfg(objective), test_every_epoch=True)
    for a, b in zip(nash.history, plain.history):
        assert a["val"] == b["val"] and a["test"] == b["test"]
    d = nash.history[0]["diagnostics"]
    assert d["bargain_attempts"] == d["batches"] == d["fallbacks"]
    assert d["status_counts"]["infeasible"] == d["batches"] and d["nash_fraction"] == 0
    assert nash.stage1["bargain_success_rate"] == 0.0


def test_stage_boundary_is_exact(tiny_dataset) -> None:
    res = _train(tiny_dataset, _cfg("nash-meta-gdro", epochs=4, bargain_epochs=2))
    attempts = [h["diagnostics"]["bargain_attempts"] for h in res.history]
    batches = res.history[0]["diagnostics"]["batches"]
    assert attempts == [batches, batches, 0, 0]
    assert [h["stage"] for h in res.history] == [1, 1, 2, 2]
    assert res.stage1["epochs"] == 2
    none = _train(tiny_dataset, _cfg("nash-ltr", epochs=2, bargain_epochs=0))
    assert all(h["diagnostics"]["bargain_attempts"] == 0 for h in none.history)
    assert none.stage1["epochs"] == 0


def test_successful_bargains_never_conflict(tiny_dataset) -> None:
    res = _train(tiny_dataset, _cfg("nash-ltr", epochs=2, bargain_epochs=2, dropout=0.0))
    for h in res.history:
        d = h["diagnostics"]
        if d["status_counts"]["ok"] == d["batches"]:
            assert d["conflict_fraction"] == 0.0


def test_backends_give_the_same_training_without_dropout(tiny_dataset) -> None:
    kw = {"dropout": 0.0, "epochs": 2}
    a = _train(tiny_dataset, _cfg("nash-forml", backend="func", **kw))
    b = _train(tiny_dataset, _cfg("nash-forml", backend="ghost", **kw))
    for ha, hb in zip(a.history, b.history):
        assert ha["val"]["roc_auc"] == pytest.approx(hb["val"]["roc_auc"], abs=1e-4)


def test_baselines_and_reductions(tiny_dataset) -> None:
    for method, kw in [("erm", {}), ("erm", {"erm_reduction": "mean"}), ("dro", {})]:
        res = _train(tiny_dataset, _cfg(method, **kw))
        assert len(res.history) == 3 and res.stage1 == {}
        assert "conflict_fraction" not in res.history[0]["diagnostics"]
    # Same seed: the reference ERM (1/√B weights) differs from the mean reduction.
    ref = _train(tiny_dataset, _cfg("erm"))
    mean = _train(tiny_dataset, _cfg("erm", erm_reduction="mean"))
    assert ref.last["test"] != mean.last["test"]
    # Seeded: identical reruns.
    again = _train(tiny_dataset, _cfg("erm"))
    assert again.last["test"] == ref.last["test"]


def test_selection_uses_validation_not_test() -> None:
    history = [
        {"epoch": 1, "val": {"roc_auc": 0.7}, "test": {"roc_auc": 0.99}},
        {"epoch": 2, "val": {"roc_auc": 0.8}, "test": {"roc_auc": 0.50}},
        {"epoch": 3, "val": {"roc_auc": math.nan}, "test": {"roc_auc": 0.99}},
        {"epoch": 4, "val": {"roc_auc": 0.8}, "test": {"roc_auc": 0.60}},
    ]
    assert select_epoch(history, "roc_auc") == 2  # ties go to the earliest; NaN skipped
    gap = [
        {"epoch": 1, "val": {"roc_auc_group_gap": 0.2}},
        {"epoch": 2, "val": {"roc_auc_group_gap": 0.1}},
    ]
    assert select_epoch(gap, "group_gap") == 2
    with pytest.raises(ValueError, match="selection_metric"):
        select_epoch(history, "test_roc_auc")


def test_result_reports_the_selected_epoch(tiny_dataset) -> None:
    res = _train(tiny_dataset, _cfg("ltr", epochs=3), test_every_epoch=True)
    best = select_epoch(res.history, "roc_auc")
    assert res.selected_epoch == best
    # test is evaluated once at the end on the selected epoch's weights: the same numbers as a
    # per-epoch evaluation would have given at that epoch
    plain = _train(tiny_dataset, _cfg("ltr", epochs=3))
    assert all("test" not in h for h in plain.history)
    assert plain.selected == res.selected and plain.last == res.last
    assert res.selected["test"] == res.history[best - 1]["test"]
    assert res.last["test"] == res.history[-1]["test"]
    d = res.to_dict()
    assert d["dataset"]["players"] == ["(g0, y=0)", "(g0, y=1)", "(g1, y=0)", "(g1, y=1)"]


def test_single_player_skips_bargaining_with_a_note(dataset_factory) -> None:
    ds = dataset_factory(n_groups=1)
    res = _train(ds, _cfg("nash-ltr", players="group", epochs=1))
    assert any("bargaining skipped" in n for n in res.notes)
    assert res.history[0]["diagnostics"]["bargain_attempts"] == 0


def test_config_errors(tiny_dataset) -> None:
    with pytest.raises(ValueError, match="method"):
        FairTrainConfig(method="nash-dro")
    with pytest.raises(ValueError, match="val_loss"):
        FairTrainConfig(val_loss="mse")
    with pytest.raises(ValueError, match="bargain_epochs"):
        FairTrainConfig(bargain_epochs=-1)
    with pytest.raises(ValueError, match="cvar_fraction"):
        FairTrainConfig(cvar_fraction=0.0)
    with pytest.raises(ValueError, match="no defaults"):
        config_for("adult", "age", "erm")
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train_fair(tiny_dataset, _cfg("erm", batch_size=1000))
    cfg = config_for("german", "age", "nash-ltr", epochs=7, lr=None)
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.bargain_epochs) == (7, 1e-3, 32, 10)
