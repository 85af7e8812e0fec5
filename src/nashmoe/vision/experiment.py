"""The image experiment: train a small MoE ViT on CIFAR-10 per method and seed, then measure clean
accuracy and accuracy under the CIFAR-10-C corruptions.

Splits (all stratified by class, drawn with a fixed split seed so that every method and seed sees
the same images; the run seed changes initialisation, batch order and augmentation only):

- validation: ``val_size`` images carved out of the CIFAR-10 *train* set; it picks the epoch whose
  weights are evaluated (best validation accuracy; the last epoch when ``val_size`` is 0). The test
  set is never used for any choice.
- train: ``train_limit`` images of the rest of the train set (all 50,000 − ``val_size`` by default).
- test: ``test_limit`` images of the 10,000 test images (all by default). The corrupted test set is
  that subsample under every corruption × severity, corrupted once with a fixed ``corruption_seed``
  (so all runs are scored on identical images) and cached on disk.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nashmoe.data.cifar import cifar10_labels, default_cache_dir, load_cifar10
from nashmoe.vision.augment import random_crop_flip
from nashmoe.vision.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from nashmoe.vision.model import ViT, ViTConfig, to_input

__all__ = [
    "CORRUPTION_SET_VERSION",
    "SPLIT_SEED",
    "ExperimentData",
    "TrainSettings",
    "corrupted_test_set",
    "evaluate_accuracy",
    "load_experiment_data",
    "run_one",
    "stratified_subset",
    "train_model",
]

SPLIT_SEED = 0
CORRUPTION_SET_VERSION = 1  # bump when a corruption changes: invalidates cached corrupted sets

Progress = Callable[[int], None]  # called with a number of images just processed


def stratified_subset(
    labels: np.ndarray, size: int, *, seed: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Sorted indices of ``size`` items drawn without replacement, as evenly over the classes as
    the class sizes allow (largest-remainder rounding), never from ``exclude``."""
    labels = np.asarray(labels)
    pool = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        pool[exclude] = False
    available = np.flatnonzero(pool)
    if size > len(available):
        raise ValueError(f"asked for {size} items but only {len(available)} are available")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[available])
    per_class = [rng.permutation(available[labels[available] == c]) for c in classes]
    share = np.array([len(p) for p in per_class], dtype=np.float64) / len(available) * size
    take = np.floor(share).astype(int)
    for c in np.argsort(-(share - take), kind="stable")[: size - int(take.sum())]:
        take[c] += 1
    return np.sort(np.concatenate([p[:k] for p, k in zip(per_class, take)])).astype(np.int64)


@dataclass
class ExperimentData:
    """uint8 images ``[N, 32, 32, 3]`` and int64 labels of the three splits, plus their indices
    into the source files (for the record)."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def load_experiment_data(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    train_limit: int | None = None,
    val_size: int = 1000,
    test_limit: int | None = None,
) -> ExperimentData:
    """Decode CIFAR-10 (cached) and carve the splits described in the module docstring."""
    if val_size < 0:
        raise ValueError(f"val_size must be >= 0, got {val_size}")
    for name, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    train_labels = cifar10_labels("train", data_dir=data_dir)
    test_labels = cifar10_labels("test", data_dir=data_dir)
    val_idx = stratified_subset(train_labels, val_size, seed=SPLIT_SEED)
    rest = len(train_labels) - val_size
    n_train = rest if train_limit is None else min(train_limit, rest)
    train_idx = stratified_subset(train_labels, n_train, seed=SPLIT_SEED + 1, exclude=val_idx)
    n_test = len(test_labels) if test_limit is None else min(test_limit, len(test_labels))
    test_idx = stratified_subset(test_labels, n_test, seed=SPLIT_SEED + 2)
    train_images = _images("train", np.concatenate([train_idx, val_idx]), data_dir, cache_dir)
    test_images = _images("test", test_idx, data_dir, cache_dir)
    digest = hashlib.sha256(test_idx.tobytes()).hexdigest()[:12]
    info = {
        "train_size": len(train_idx),
        "val_size": len(val_idx),
        "test_size": len(test_idx),
        "split_seed": SPLIT_SEED,
        "test_indices_sha256_12": digest,
        "selection": "best validation accuracy over epochs (validation carved from train)"
        if val_size
        else "last epoch (no validation split)",
    }
    return ExperimentData(
        train_images[: len(train_idx)],
        train_labels[train_idx],
        train_images[len(train_idx) :],
        train_labels[val_idx],
        test_images,
        test_labels[test_idx],
        info,
    )


def _images(split: str, indices: np.ndarray, data_dir, cache_dir) -> np.ndarray:
    """The images at ``indices``: decoded one by one for small subsets (tests, smoke runs), else
    from the full decode, which is cached on disk and shared by later runs and workers."""
    if len(indices) < _SMALL_SUBSET:
        return load_cifar10(split, data_dir=data_dir, cache_dir=cache_dir, indices=indices).images
    return load_cifar10(split, data_dir=data_dir, cache_dir=cache_dir).images[indices]


_SMALL_SUBSET = 3000


def corrupted_test_set(
    images: np.ndarray,
    corruptions: Sequence[str] = CORRUPTIONS,
    *,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
) -> dict[str, list[np.ndarray]]:
    """``{name: [uint8 [N, 32, 32, 3] per severity]}``: ``images`` under each severity of each
    corruption.

    Cached as one ``.npy`` per corruption and severity, keyed by the images' hash, the seed and
    :data:`CORRUPTION_SET_VERSION`; cached files are memory-mapped (read-only), which lets
    parallel workers share one copy.
    """
    images = np.ascontiguousarray(images)
    key = hashlib.sha256(images.tobytes()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out: dict[str, list[np.ndarray]] = {}
    for name in corruptions:
        parts = []
        for severity in severities:
            path = (
                root / f"cifar10c-v{CORRUPTION_SET_VERSION}-{key}-seed{seed}-{name}-{severity}.npy"
            )
            arr = None
            if use_cache and path.exists():
                arr = np.load(path, mmap_mode="r")
                if arr.shape != images.shape or arr.dtype != np.uint8:
                    arr = None
            if arr is None:
                arr = corrupt(images, name, severity, seed=seed)
                if use_cache:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
                    np.save(tmp, arr)
                    tmp.replace(path)
            parts.append(arr)
            if progress:
                progress(len(images))
        out[name] = parts
    return out


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings: AdamW with linear warm-up then cosine decay to 0, gradient clipping,
    random crop (4-pixel padding) and horizontal flip."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    augment: bool = True
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be positive")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 <= self.warmup_frac < 1):
            raise ValueError("need lr > 0, weight_decay >= 0 and warmup_frac in [0, 1)")


@torch.no_grad()
def evaluate_accuracy(
    model: ViT,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on uint8 images ``[N, 32, 32, 3]``."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = to_input(torch.from_numpy(np.array(images[start : start + batch_size])))  # copy: mmaps
        pred = model(x).logits.argmax(dim=-1).numpy()
        correct += int((pred == labels[start : start + batch_size]).sum())
        if progress:
            progress(len(x))
    return correct / max(len(labels), 1)


def train_model(
    config: ViTConfig,
    data: ExperimentData,
    settings: TrainSettings,
    *,
    seed: int,
    progress: Progress | None = None,
) -> tuple[ViT, dict[str, Any]]:
    """Train a :class:`ViT` and return it with the selected epoch's weights and the history."""
    torch.manual_seed(seed)
    model = ViT(config)
    gen = torch.Generator().manual_seed(seed)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embed" in name or "token" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
    )
    n = len(data.train_y)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    warmup = max(1, round(settings.warmup_frac * total))

    def lr_at(step: int) -> float:
        if step < warmup:
            return settings.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return settings.lr * 0.5 * (1 + math.cos(math.pi * t))

    train_x = torch.from_numpy(data.train_x)
    train_y = torch.from_numpy(data.train_y)
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    step = 0
    train_seconds = train_cpu = 0.0
    for epoch in range(settings.epochs):
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        order = torch.randperm(n, generator=gen)
        loss_sum = aux_sum = 0.0
        correct = 0
        for i in range(steps_per_epoch):
            idx = order[i * settings.batch_size : (i + 1) * settings.batch_size]
            xb = train_x[idx]
            if settings.augment:
                xb = random_crop_flip(xb, generator=gen)
            yb = train_y[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            out = model(to_input(xb))
            loss = F.cross_entropy(out.logits, yb, label_smoothing=settings.label_smoothing)
            opt.zero_grad(set_to_none=True)
            (loss + out.aux_loss).backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            step += 1
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"{config.method}: non-finite loss at step {step}")
            loss_sum += loss_value * len(yb)
            aux_sum += out.aux_loss.item() * len(yb)
            correct += int((out.logits.detach().argmax(-1) == yb).sum())
            if progress:
                progress(len(yb))
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        train_cpu += time.process_time() - c0
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / n,
            "aux_loss": aux_sum / n,
            "train_accuracy": correct / n,
            "seconds": seconds,
        }
        if len(data.val_y):
            val = evaluate_accuracy(
                model,
                data.val_x,
                data.val_y,
                batch_size=settings.eval_batch_size,
                progress=progress,
            )
            record["val_accuracy"] = val
            if best is None or val > best[0]:
                best = (val, epoch + 1, copy.deepcopy(model.state_dict()))
        history.append(record)
    if best is not None:
        model.load_state_dict(best[2])
        selected = best[1]
    else:
        selected = settings.epochs
    model.eval()
    return model, {
        "history": history,
        "selected_epoch": selected,
        "train_seconds": train_seconds,
        "train_images_per_s": settings.epochs * n / train_seconds if train_seconds else None,
        "train_cpu_seconds": train_cpu,
    }


def run_one(
    config: ViTConfig,
    data: ExperimentData,
    corrupted: dict[str, list[np.ndarray]],
    settings: TrainSettings,
    *,
    seed: int,
    severities: Sequence[int] = SEVERITIES,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train one method with one seed; clean and corrupted test accuracy (JSON-ready).

    ``corrupted`` is :func:`corrupted_test_set` of ``data.test_x`` for ``severities``."""
    t_start = time.perf_counter()
    model, fit = train_model(config, data, settings, seed=seed, progress=progress)
    t0, c0 = time.perf_counter(), time.process_time()
    bs = settings.eval_batch_size
    clean = evaluate_accuracy(model, data.test_x, data.test_y, batch_size=bs, progress=progress)
    by_corruption: dict[str, list[float]] = {}
    for name, sets in corrupted.items():
        by_corruption[name] = [
            evaluate_accuracy(model, sets[i], data.test_y, batch_size=bs, progress=progress)
            for i in range(len(sets))
        ]
    eval_seconds = time.perf_counter() - t0
    eval_cpu = time.process_time() - c0
    n_eval = len(data.test_y) * (1 + sum(len(v) for v in corrupted.values()))
    grid = np.array(list(by_corruption.values())) if by_corruption else np.zeros((0, 0))
    return {
        "method": config.method,
        "seed": seed,
        "clean_accuracy": clean,
        "corruption_accuracy": by_corruption,
        "mean_corruption_accuracy": float(grid.mean()) if grid.size else None,
        "severities": list(severities),
        "severity_accuracy": grid.mean(axis=0).tolist() if grid.size else None,
        "selected_epoch": fit["selected_epoch"],
        "best_val_accuracy": max(
            (h["val_accuracy"] for h in fit["history"] if "val_accuracy" in h), default=None
        ),
        "history": fit["history"],
        "parameters": model.num_parameters(),
        "train_seconds": fit["train_seconds"],
        "train_images_per_s": fit["train_images_per_s"],
        "eval_seconds": eval_seconds,
        "eval_images_per_s": n_eval / eval_seconds if eval_seconds else None,
        # process CPU time: with one thread per run, the speed a run gets from a whole core
        # (what to size a budget by on a shared machine)
        "train_cpu_seconds": fit["train_cpu_seconds"],
        "eval_cpu_seconds": eval_cpu,
        "train_images_per_cpu_s": settings.epochs * len(data.train_y) / fit["train_cpu_seconds"]
        if fit["train_cpu_seconds"]
        else None,
        "eval_images_per_cpu_s": n_eval / eval_cpu if eval_cpu else None,
        "seconds": time.perf_counter() - t_start,
        "threads": torch.get_num_threads(),
        "config": config.to_dict(),
        "settings": asdict(settings),
    }
