"""The trainer on a tiny synthetic problem, and the ``nashmoe defer`` command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nashmoe.cli import main
from nashmoe.defer.experts import sample_synthetic_experts, synthetic_expert_specs
from nashmoe.defer.models import MLPHead
from nashmoe.defer.trainer import MultiExpertL2D, TensorBatches

from ._shared import require_data


def blobs(n: int, seed: int, num_experts: int = 2):
    """K = 4 Gaussian blobs in 6-D with specialist experts."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centers = torch.eye(4, 6) * 2.5
    x = centers[y] + torch.randn(n, 6, generator=g)
    specs = synthetic_expert_specs(num_experts, 4, family="specialist", p_in=1.0, seed=0)
    m = torch.from_numpy(sample_synthetic_experts(y.numpy(), specs, 4, seed=seed))
    return x, y, m


def test_tensor_batches() -> None:
    x, y, m = blobs(10, 0)
    batches = TensorBatches(x, y, m, batch_size=4, shuffle=True, seed=1)
    assert len(batches) == 3
    first = [b[1].tolist() for b in batches]
    second = [b[1].tolist() for b in batches]
    assert sorted(v for batch in first for v in batch) == sorted(y.tolist())
    assert first != second  # reshuffled every pass
    assert len(TensorBatches(x, y, m, batch_size=4, drop_last=True)) == 2
    with pytest.raises(ValueError, match="length"):
        TensorBatches(x[:5], y, m)
    masked = next(iter(TensorBatches(x, y, m, torch.ones_like(m, dtype=torch.bool))))
    assert len(masked) == 4


@pytest.mark.parametrize("loss", ["ce", "ova", "picce_ce", "picce_ova"])
def test_fit_and_test_outputs(loss: str) -> None:
    torch.manual_seed(0)
    tr, va, te = blobs(600, 1), blobs(200, 2), blobs(200, 3)
    trainer = MultiExpertL2D(MLPHead(6, 6, hidden=16), num_classes=4, num_experts=2, loss=loss)
    metrics = trainer.fit(
        TensorBatches(*tr, batch_size=64, shuffle=True),
        TensorBatches(*va, batch_size=100),
        TensorBatches(*te, batch_size=100),
        epochs=4,
        lr=0.01,
    )
    assert len(trainer.history) == 4
    best = int(np.argmax([h["val_system_acc"] for h in trainer.history]))
    assert metrics["best_epoch"] == best
    assert metrics["best_val_system_acc"] == trainer.history[best]["val_system_acc"]
    assert metrics["classifier_all_acc"] > 0.7  # the blobs are easy
    assert metrics["system_acc"] > 0.6
    out = trainer.test(TensorBatches(*te, batch_size=64))
    assert out["defers"].shape == (200,) and out["expert_preds"].shape == (200, 2)
    assert out["class_probs"].shape == (200, 4)
    assert ((out["defer_to"] >= 0) == out["defers"].astype(bool)).all()


def test_trainer_errors() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        MultiExpertL2D(MLPHead(6, 6), num_classes=4, num_experts=2, loss="hinge")
    trainer = MultiExpertL2D(MLPHead(6, 5), num_classes=4, num_experts=2)
    x, y, m = blobs(8, 0)
    with pytest.raises(ValueError, match="K \\+ J"):
        trainer.surrogate_loss_function(trainer.model(x), m, y)
    with pytest.raises(ValueError, match="batch must be"):
        trainer.fit_epoch([(x, y)], torch.optim.SGD(trainer.model.parameters(), lr=0.1))


def test_cli_cifar10n_tiny(tmp_path, capsys) -> None:
    pytest.importorskip("PIL")
    require_data("cifar10/train.npz")
    require_data("cifar10n_labels.npz")
    out = tmp_path / "c10n"
    threads = torch.get_num_threads()
    code = main(
        [
            "defer",
            "--dataset",
            "cifar10n",
            "--image-limit",
            "300",
            "--split-sizes",
            "200",
            "50",
            "50",
            "--epochs",
            "1",
            "--width",
            "4",
            "--loss",
            "ce",
            "picce_ce",
            "--quiet",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert torch.get_num_threads() == threads  # restored after the run
    payload = json.loads((out / "results.json").read_text())
    assert [r["loss"] for r in payload["runs"]] == ["ce", "picce_ce"]
    run = payload["runs"][0]
    assert run["num_experts"] == 3 and run["config"]["train_size"] == 200
    assert 0.0 <= run["test"]["system_acc"] <= 1.0
    assert len(run["test"]["defer_rate"]) == 3
    assert "picce_ce" in capsys.readouterr().out


def test_cli_hatespeech_and_errors(tmp_path, capsys) -> None:
    require_data("hatespeech/labeled_data.csv")
    code = main(
        [
            "defer",
            "--dataset",
            "hatespeech",
            "--epochs",
            "1",
            "--loss",
            "picce_ova",
            "--quiet",
            "--threads",
            "1",
            "--num-experts",
            "2",
            "--hidden",
            "32",
            "--train-limit",
            "6000",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    run = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert run["dataset"] == "hatespeech" and run["num_experts"] == 2
    assert run["test"]["classifier_all_acc"] > 0.7  # majority class alone gives 0.77
    assert main(["defer", "--dataset", "hatespeech", "--experts", "human"]) == 2
    assert main(["defer", "--dataset", "hatespeech", "--model", "cnn"]) == 2
    assert "error" in capsys.readouterr().err


def test_cifar10n_data_first_j_annotators() -> None:
    pytest.importorskip("PIL")
    require_data("cifar10/train.npz")
    require_data("cifar10n_labels.npz")
    from nashmoe.defer.data import load_cifar10, load_cifar10n_labels
    from nashmoe.defer.experiments import cifar10n_data

    data = cifar10n_data(image_limit=300, sizes=(200, 50, 50), num_experts=2, seed=1)
    assert data.num_experts == 2 and data.train.expert_preds.shape == (200, 2)
    assert data.info["experts"] == ["random_label1", "random_label2"]
    labels = load_cifar10n_labels()
    images = load_cifar10("train", limit=300).images
    where = {images[i].tobytes(): i for i in range(300)}
    seen = set()
    # Each row's image, label and expert answers come from the same train index.
    for split in (data.train, data.val, data.test):
        for x, y, m in zip(split.x.numpy(), split.y.tolist(), split.expert_preds.tolist()):
            i = where[x.tobytes()]
            seen.add(i)
            assert y == labels["clean_label"][i]
            assert m == [labels["random_label1"][i], labels["random_label2"][i]]
    assert len(seen) == 300
    with pytest.raises(ValueError, match="1 to 3 annotators"):
        cifar10n_data(image_limit=300, sizes=(200, 50, 50), num_experts=4)
