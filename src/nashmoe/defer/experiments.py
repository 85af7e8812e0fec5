"""End-to-end multi-expert L2D experiments: data + experts + model + trainer (used by the
``nashmoe defer`` CLI and ``benchmarks/bench_defer_sweep.py``).

Settings (spec defer.md, section 9):

- :func:`cifar10n_data`: CIFAR-10 train images with the three CIFAR-10N annotators as J = 3 real
  experts and ``clean_label`` as ground truth; seeded stratified 40,000 / 5,000 / 5,000 split of the
  train set (the test images have no CIFAR-10N labels). The official test set is kept for
  ``classifier_all_acc`` only.
- :func:`cifar10_synthetic_data`: J synthetic class-dependent experts
  (:mod:`nashmoe.defer.experts`); train / val from the train set, test = the official test set.
- :func:`hatespeech_data`: Davidson et al. tweets with J simulated annotators drawn from the vote
  counts; 70 / 10 / 20 stratified split.

Inputs are raw pixels (for :class:`~nashmoe.defer.models.SmallCNN`), frozen k-means features (for
:class:`~nashmoe.defer.models.MLPHead`) or token ids (for
:class:`~nashmoe.defer.models.BagOfWordsClassifier`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nashmoe.defer.augment import random_crop_flip
from nashmoe.defer.data import (
    CIFAR10N_EXPERT_KEYS,
    default_cache_dir,
    load_cifar10,
    load_cifar10n_labels,
    load_hatespeech,
    stratified_split,
)
from nashmoe.defer.experts import (
    sample_synthetic_experts,
    sample_vote_annotators,
    synthetic_expert_specs,
)
from nashmoe.defer.metrics import compute_coverage_v_acc_curve, expert_summary
from nashmoe.defer.models import BagOfWordsClassifier, MLPHead, SmallCNN
from nashmoe.defer.text import build_vocab, encode
from nashmoe.defer.trainer import MultiExpertL2D, TensorBatches

__all__ = [
    "DeferData",
    "Split",
    "cifar10_synthetic_data",
    "cifar10n_data",
    "cifar_kmeans_features",
    "hatespeech_data",
    "run_experiment",
]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Split:
    """Inputs, labels and expert predictions [N, J] of one split."""

    x: Tensor
    y: Tensor
    expert_preds: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> TensorBatches:
        return TensorBatches(
            self.x, self.y, self.expert_preds, batch_size=batch_size, shuffle=shuffle, seed=seed
        )


@dataclass(frozen=True)
class DeferData:
    """Train / val / test splits of one L2D setting.

    ``classifier_test`` optionally holds extra (x, y) on which only the classifier can be scored
    (the official CIFAR-10 test images for CIFAR-10N). ``info`` records the construction: split
    sizes and the realised expert statistics of each split.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    num_experts: int
    input_kind: str  # "image", "features" or "tokens"
    classifier_test: tuple[Tensor, Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _summaries(splits: dict[str, Split]) -> dict[str, Any]:
    return {
        name: {"size": len(s), **expert_summary(s.y.numpy(), s.expert_preds.numpy())}
        for name, s in splits.items()
    }


def cifar_kmeans_features(
    *,
    data_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
    num_centroids: int = 256,
    stride: int = 1,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Frozen k-means features of the CIFAR-10 train and test images (cached as a ``.pt`` file).

    The extractor (:func:`~nashmoe.defer.features.fit_patch_kmeans`) is fitted on the train images
    without labels. Returns float32 [50000, 4k] and [10000, 4k].
    """
    from nashmoe.defer.features import fit_patch_kmeans

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / f"cifar10-kmeans-k{num_centroids}-s{stride}-seed{seed}.pt"
    if path.exists():
        cached = torch.load(path)
        return cached["train"], cached["test"]
    train = load_cifar10("train", data_dir=data_dir, cache_dir=cache_dir)
    test = load_cifar10("test", data_dir=data_dir, cache_dir=cache_dir)
    start = time.perf_counter()
    extractor = fit_patch_kmeans(
        train.images, num_centroids=num_centroids, stride=stride, seed=seed
    )
    f_train = extractor.transform(train.images)
    f_test = extractor.transform(test.images)
    if log is not None:
        log(f"k-means features {tuple(f_train.shape)} in {time.perf_counter() - start:.0f}s")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"train": f_train, "test": f_test}, tmp)
    tmp.replace(path)
    return f_train, f_test


def _subsample(idx: np.ndarray, labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= len(idx):
        return idx
    (keep,) = stratified_split(labels[idx], (limit,), seed=seed + 7)
    return idx[keep]


def cifar10n_data(
    *,
    data_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
    seed: int = 0,
    sizes: tuple[int, int, int] = (40_000, 5_000, 5_000),
    train_limit: int | None = None,
    inputs: str = "image",
    image_limit: int | None = None,
    num_experts: int = 3,
) -> DeferData:
    """CIFAR-10N with the three human annotators as experts (spec section 9, construction (a)).

    ``num_experts`` = J ≤ 3 keeps the first J annotation columns (``random_label1`` first).
    ``train_limit`` keeps a stratified subset of the training part; ``inputs`` is ``"image"`` or
    ``"features"`` (frozen k-means features); ``image_limit`` decodes only the first images of the
    train file (tests), in which case ``sizes`` must fit and the official test set is skipped.
    """
    if inputs not in ("image", "features"):
        raise ValueError(f"inputs must be 'image' or 'features', got {inputs!r}")
    if not 1 <= num_experts <= len(CIFAR10N_EXPERT_KEYS):
        raise ValueError(f"CIFAR-10N has 1 to 3 annotators, got num_experts={num_experts}")
    keys = list(CIFAR10N_EXPERT_KEYS[:num_experts])
    labels_n = load_cifar10n_labels(data_dir=data_dir)
    if image_limit is not None:
        train = load_cifar10("train", data_dir=data_dir, limit=image_limit)
        test = None
    else:
        train = load_cifar10("train", data_dir=data_dir, cache_dir=cache_dir)
        test = load_cifar10("test", data_dir=data_dir, cache_dir=cache_dir)
    n = len(train.labels)
    clean = labels_n["clean_label"][:n]
    if not np.array_equal(clean, train.labels):
        raise ValueError("CIFAR-10N clean_label does not match the CIFAR-10 train labels")
    experts = np.stack([labels_n[k][:n] for k in keys], axis=1)
    tr_idx, va_idx, te_idx = stratified_split(clean, sizes, seed=seed)
    tr_idx = _subsample(tr_idx, clean, train_limit, seed)
    if inputs == "features":
        f_train, f_test = cifar_kmeans_features(data_dir=data_dir, cache_dir=cache_dir)
        x_all: Tensor = f_train
        x_test = f_test
    else:
        x_all = torch.from_numpy(train.images)
        x_test = None if test is None else torch.from_numpy(test.images)
    y_all = torch.from_numpy(clean)
    m_all = torch.from_numpy(experts)

    def part(idx: np.ndarray) -> Split:
        t = torch.from_numpy(idx)
        return Split(x_all[t], y_all[t], m_all[t])

    splits = {"train": part(tr_idx), "val": part(va_idx), "test": part(te_idx)}
    clf_test = None
    if test is not None and x_test is not None:
        clf_test = (x_test, torch.from_numpy(test.labels))
    return DeferData(
        name="cifar10n",
        **splits,
        num_classes=10,
        num_experts=num_experts,
        input_kind=inputs,
        classifier_test=clf_test,
        info={"experts": keys, "split_seed": seed, **_summaries(splits)},
    )


def cifar10_synthetic_data(
    num_experts: int,
    *,
    data_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
    seed: int = 0,
    family: str = "overlapped",
    specialty_size: int = 3,
    p_in: float = 0.9,
    p_out: float = 0.0,
    p_in_min: float = 0.3,
    val_size: int = 5_000,
    train_limit: int | None = None,
    inputs: str = "features",
    features: tuple[Tensor, Tensor] | None = None,
) -> DeferData:
    """CIFAR-10 with J synthetic experts (spec section 9, construction (b)).

    Train / val: a seeded stratified split of the 50,000 train images; test: the 10,000 official
    test images. The expert specialties are seeded by ``seed``; predictions are drawn once per image
    with separate seeds for train, val and test. ``features`` passes precomputed (train, test)
    features (else they are loaded from the cache or computed).
    """
    if inputs not in ("image", "features"):
        raise ValueError(f"inputs must be 'image' or 'features', got {inputs!r}")
    train_labels = load_cifar10("train", data_dir=data_dir, cache_dir=cache_dir).labels
    test_labels = load_cifar10("test", data_dir=data_dir, cache_dir=cache_dir).labels
    if inputs == "features":
        if features is None:
            features = cifar_kmeans_features(data_dir=data_dir, cache_dir=cache_dir)
        x_train, x_test = features
    else:
        x_train = torch.from_numpy(
            load_cifar10("train", data_dir=data_dir, cache_dir=cache_dir).images
        )
        x_test = torch.from_numpy(
            load_cifar10("test", data_dir=data_dir, cache_dir=cache_dir).images
        )
    specs = synthetic_expert_specs(
        num_experts,
        10,
        family=family,
        specialty_size=specialty_size,
        p_in=p_in,
        p_out=p_out,
        p_in_min=p_in_min,
        seed=seed,
    )
    tr_idx, va_idx = stratified_split(
        train_labels, (len(train_labels) - val_size, val_size), seed=seed
    )
    tr_idx = _subsample(tr_idx, train_labels, train_limit, seed)
    base = 1000 * (seed + 1)

    def part(x: Tensor, labels: np.ndarray, idx: np.ndarray, expert_seed: int) -> Split:
        y = labels[idx]
        preds = sample_synthetic_experts(y, specs, 10, seed=expert_seed)
        return Split(x[torch.from_numpy(idx)], torch.from_numpy(y), torch.from_numpy(preds))

    splits = {
        "train": part(x_train, train_labels, tr_idx, base + 1),
        "val": part(x_train, train_labels, va_idx, base + 2),
        "test": part(x_test, test_labels, np.arange(len(test_labels)), base + 3),
    }
    return DeferData(
        name="cifar10-synthetic",
        **splits,
        num_classes=10,
        num_experts=num_experts,
        input_kind=inputs,
        info={
            "family": family,
            "specialties": [sorted(s.specialty) for s in specs],
            "p_in": [s.p_in for s in specs],
            "p_out": [s.p_out for s in specs],
            **_summaries(splits),
        },
    )


def hatespeech_data(
    num_experts: int = 3,
    *,
    data_dir: PathLike | None = None,
    seed: int = 0,
    swap: Sequence[float] | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    max_len: int = 96,
    min_count: int = 2,
    train_limit: int | None = None,
) -> DeferData:
    """Hate speech with J simulated annotators (spec section 9, construction (c)).

    Expert j draws each answer from the tweet's vote distribution and swaps hate and offensive with
    probability ``swap[j]`` (default: spread from 0 to 0.3 so the experts differ).
    """
    data = load_hatespeech(data_dir=data_dir)
    if swap is None:
        swap = list(np.linspace(0.0, 0.3, num_experts)) if num_experts > 1 else [0.0]
    tr_idx, va_idx, te_idx = stratified_split(data.labels, fractions, seed=seed)
    tr_idx = _subsample(tr_idx, data.labels, train_limit, seed)
    vocab = build_vocab([data.tweets[i] for i in tr_idx], min_count=min_count)
    tokens = encode(data.tweets, vocab, max_len=max_len)
    preds = sample_vote_annotators(data.vote_probs, num_experts, seed=seed + 17, swap=swap)
    y = torch.from_numpy(data.labels)
    m = torch.from_numpy(preds)

    def part(idx: np.ndarray) -> Split:
        t = torch.from_numpy(idx)
        return Split(tokens[t], y[t], m[t])

    splits = {"train": part(tr_idx), "val": part(va_idx), "test": part(te_idx)}
    return DeferData(
        name="hatespeech",
        **splits,
        num_classes=3,
        num_experts=num_experts,
        input_kind="tokens",
        info={"swap": [float(q) for q in swap], "vocab_size": len(vocab) + 2, **_summaries(splits)},
    )


def build_model(
    data: DeferData, *, width: int = 32, hidden: int = 256, dropout: float = 0.0
) -> nn.Module:
    """The default model for the input kind: SmallCNN, MLPHead or BagOfWordsClassifier."""
    outputs = data.num_classes + data.num_experts
    if data.input_kind == "image":
        return SmallCNN(outputs, width=width, dropout=dropout)
    if data.input_kind == "features":
        return MLPHead(data.train.x.shape[1], outputs, hidden=hidden, dropout=dropout)
    vocab = int(data.info.get("vocab_size", int(data.train.x.max()) + 1))
    return BagOfWordsClassifier(vocab, outputs, dim=hidden, hidden=hidden)


def run_experiment(
    data: DeferData,
    *,
    loss: str,
    seed: int = 0,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    optimizer: str = "adam",
    width: int = 32,
    hidden: int = 256,
    dropout: float = 0.0,
    augment: bool | None = None,
    curve: bool = True,
    verbose: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one model with ``loss`` and report the test metrics of the best-validation checkpoint.

    Returns a JSON-ready dict: the configuration, the test metrics
    (:func:`~nashmoe.defer.metrics.compute_multi_expert_metrics`),
    ``official_test_classifier_acc`` where the data carry one, the per-epoch history, the
    coverage–accuracy curve (coverage and system_acc lists) and the wall time.
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    torch.manual_seed(seed)
    model = build_model(data, width=width, hidden=hidden, dropout=dropout)
    use_aug = (data.input_kind == "image") if augment is None else augment
    trainer = MultiExpertL2D(
        model,
        num_classes=data.num_classes,
        num_experts=data.num_experts,
        loss=loss,
        train_transform=random_crop_flip if use_aug else None,
        seed=seed,
    )
    if optimizer == "adam":
        opt: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW
    else:

        def opt(params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
            return torch.optim.SGD(
                params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
            )

    start = time.perf_counter()
    metrics = trainer.fit(
        data.train.loader(batch_size, shuffle=True, seed=seed),
        data.val.loader(1000),
        data.test.loader(1000),
        epochs=epochs,
        optimizer=opt,
        lr=lr,
        weight_decay=weight_decay,
        verbose=verbose,
        log=log,
    )
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "dataset": data.name,
        "loss": loss,
        "seed": seed,
        "num_experts": data.num_experts,
        "config": {
            "epochs": epochs,
            "lr": lr,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "optimizer": optimizer,
            "width": width,
            "hidden": hidden,
            "dropout": dropout,
            "augment": use_aug,
            "input_kind": data.input_kind,
            "train_size": len(data.train),
        },
        "test": metrics,
        "history": trainer.history,
        "seconds": seconds,
    }
    if data.classifier_test is not None:
        x, y = data.classifier_test
        dummy = torch.zeros(len(y), data.num_experts, dtype=torch.long)
        scores, _, _ = trainer.scores(TensorBatches(x, y, dummy, batch_size=1000))
        preds = scores[:, : data.num_classes].argmax(1)
        result["official_test_classifier_acc"] = float((preds == y).double().mean())
    if curve:
        assert trainer.final_outputs is not None
        points = compute_coverage_v_acc_curve(trainer.final_outputs, num_quantiles=50)
        result["curve"] = {
            "coverage": [p["coverage"] for p in points],
            "system_acc": [p["system_acc"] for p in points],
        }
    return result
