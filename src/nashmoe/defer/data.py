"""Loaders for the learning-to-defer data: CIFAR-10, CIFAR-10N and the hate-speech tweets.

- CIFAR-10 (Krizhevsky 2009): :func:`load_cifar10` lives in :mod:`nashmoe.data.cifar` (shared with
  :mod:`nashmoe.vision`) and is re-exported here.
- CIFAR-10N (Wei et al., "Learning with Noisy Labels Revisited", ICLR 2022) gives three independent
  human labels per CIFAR-10 train image (``random_label1..3``), aligned with the train order.
- Hate speech (Davidson et al., ICWSM 2017): tweets with per-class annotator vote counts.

Files are found only through ``data_dir`` or ``$NASHMOE_DATA`` (:func:`nashmoe._paths.data_file`).
The decoded-image cache lives in ``cache_dir``, ``$NASHMOE_CACHE`` or ``~/.cache/nashmoe``, never
inside the repository.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

from nashmoe._paths import data_file
from nashmoe.data.cifar import CACHE_ENV_VAR as CACHE_ENV_VAR  # re-exported
from nashmoe.data.cifar import CifarData, default_cache_dir, load_cifar10

__all__ = [
    "CIFAR10N_EXPERT_KEYS",
    "HATESPEECH_CLASSES",
    "CifarData",
    "HateSpeechData",
    "default_cache_dir",
    "load_cifar10",
    "load_cifar10n_labels",
    "load_hatespeech",
    "stratified_split",
]

CIFAR10N_EXPERT_KEYS = ("random_label1", "random_label2", "random_label3")
CIFAR10N_KEYS = ("clean_label", "aggre_label", "worse_label", *CIFAR10N_EXPERT_KEYS)
HATESPEECH_CLASSES = ("hate_speech", "offensive_language", "neither")


def load_cifar10n_labels(
    *, data_dir: str | os.PathLike[str] | None = None
) -> dict[str, np.ndarray]:
    """The CIFAR-10N label arrays (int64 [50000] each), aligned with ``cifar10/train.npz``.

    Keys: ``clean_label``, ``aggre_label``, ``worse_label`` and the three independent annotations
    ``random_label1..3`` (:data:`CIFAR10N_EXPERT_KEYS`).
    """
    path = data_file("cifar10n_labels.npz", data_dir)
    with np.load(path) as npz:
        missing = [k for k in CIFAR10N_KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"{path} lacks keys {missing}")
        return {k: npz[k].astype(np.int64) for k in CIFAR10N_KEYS}


@dataclass(frozen=True)
class HateSpeechData:
    """Davidson et al. (2017) tweets.

    Attributes:
        tweets: the raw tweet texts.
        votes: int64 [N, 3], annotator votes for (hate, offensive, neither).
        labels: int64 [N], the majority class (0 hate, 1 offensive, 2 neither).
    """

    tweets: tuple[str, ...]
    votes: np.ndarray
    labels: np.ndarray

    @property
    def vote_probs(self) -> np.ndarray:
        """float64 [N, 3]: votes / count, the per-tweet annotator distribution."""
        return self.votes / self.votes.sum(1, keepdims=True)


def load_hatespeech(*, data_dir: str | os.PathLike[str] | None = None) -> HateSpeechData:
    """Parse ``hatespeech/labeled_data.csv`` with a CSV parser (tweets hold quotes and newlines)."""
    path = data_file("hatespeech/labeled_data.csv", data_dir)
    tweets: list[str] = []
    votes: list[tuple[int, int, int]] = []
    labels: list[int] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"count", *HATESPEECH_CLASSES, "class", "tweet"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns {sorted(need)}, got {reader.fieldnames}")
        for row in reader:
            v = tuple(int(row[c]) for c in HATESPEECH_CLASSES)
            if sum(v) != int(row["count"]):
                raise ValueError(f"{path}: votes {v} do not sum to count {row['count']}")
            tweets.append(row["tweet"])
            votes.append(v)  # type: ignore[arg-type]
            labels.append(int(row["class"]))
    return HateSpeechData(
        tweets=tuple(tweets),
        votes=np.asarray(votes, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
    )


def stratified_split(
    labels: np.ndarray, sizes: tuple[float, ...], *, seed: int = 0
) -> tuple[np.ndarray, ...]:
    """Seeded split of ``range(len(labels))`` into parts stratified by label.

    ``sizes`` are either counts summing to at most N, or fractions summing to at most 1. Each class
    is shuffled and divided in proportion; rounding is fixed up so the part sizes are exact. The
    returned index arrays are sorted.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not sizes or any(s < 0 for s in sizes):
        raise ValueError(f"sizes must be non-empty and non-negative, got {sizes}")
    if all(float(s).is_integer() and s >= 1 for s in sizes if s) and sum(sizes) > 1:
        counts = [int(s) for s in sizes]
    else:
        if sum(sizes) > 1 + 1e-9:
            raise ValueError(f"fractions must sum to at most 1, got {sizes}")
        counts = [round(s * n) for s in sizes]
    if sum(counts) > n:
        raise ValueError(f"split sizes {counts} exceed the {n} examples")
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(labels, return_inverse=True)
    per_class = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    # Largest-remainder allocation of each part over classes, proportional to class size.
    parts: list[list[np.ndarray]] = [[] for _ in counts]
    cursor = [0] * len(classes)
    frac = np.array([len(p) for p in per_class], dtype=np.float64) / n
    for part, want in enumerate(counts):
        raw = frac * want
        take = np.floor(raw).astype(int)
        left = [len(per_class[c]) - cursor[c] for c in range(len(classes))]
        take = np.minimum(take, left)
        order = np.argsort(-(raw - np.floor(raw)), kind="stable")
        short = want - int(take.sum())
        for c in np.concatenate([order, order]):
            if short <= 0:
                break
            if take[c] < left[c]:
                take[c] += 1
                short -= 1
        if short > 0:
            raise ValueError(f"cannot fill split part {part} with {want} examples")
        for c in range(len(classes)):
            parts[part].append(per_class[c][cursor[c] : cursor[c] + take[c]])
            cursor[c] += int(take[c])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
