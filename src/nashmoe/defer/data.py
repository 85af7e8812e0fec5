"""Loaders for the learning-to-defer data: CIFAR-10, CIFAR-10N and the hate-speech tweets.

- CIFAR-10 (Krizhevsky 2009) is stored as JPEGs inside an ``.npz`` (``jpeg``, ``offsets``, ``y``,
  ``classes``); :func:`load_cifar10` decodes it once with Pillow and caches the uint8 array.
- CIFAR-10N (Wei et al., "Learning with Noisy Labels Revisited", ICLR 2022) gives three independent
  human labels per CIFAR-10 train image (``random_label1..3``), aligned with the train order.
- Hate speech (Davidson et al., ICWSM 2017): tweets with per-class annotator vote counts.

Files are found only through ``data_dir`` or ``$NASHMOE_DATA`` (:func:`nashmoe._paths.data_file`).
The decoded-image cache lives in ``cache_dir``, ``$NASHMOE_CACHE`` or ``~/.cache/nashmoe``, never
inside the repository.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nashmoe._optional import require
from nashmoe._paths import data_file

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

CACHE_ENV_VAR = "NASHMOE_CACHE"
CIFAR10N_EXPERT_KEYS = ("random_label1", "random_label2", "random_label3")
CIFAR10N_KEYS = ("clean_label", "aggre_label", "worse_label", *CIFAR10N_EXPERT_KEYS)
HATESPEECH_CLASSES = ("hate_speech", "offensive_language", "neither")


def default_cache_dir() -> Path:
    """``$NASHMOE_CACHE`` if set, else ``$XDG_CACHE_HOME/nashmoe`` (``~/.cache/nashmoe``)."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "nashmoe"


@dataclass(frozen=True)
class CifarData:
    """Decoded CIFAR-10 images.

    Attributes:
        images: uint8 [N, 32, 32, 3] (HWC, RGB).
        labels: int64 [N].
        classes: the 10 class names, airplane … truck.
        indices: int64 [N], positions of these images in the source file.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    indices: np.ndarray


def _decode_jpegs(jpeg: np.ndarray, offsets: np.ndarray, indices: np.ndarray) -> np.ndarray:
    Image = require("PIL.Image", extra="vision", purpose="decoding CIFAR-10", package="Pillow")
    out = np.empty((len(indices), 32, 32, 3), dtype=np.uint8)
    for row, i in enumerate(indices):
        blob = jpeg[offsets[i] : offsets[i + 1]].tobytes()
        with Image.open(io.BytesIO(blob)) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        if arr.shape != (32, 32, 3):
            raise ValueError(f"CIFAR-10 image {i} has shape {arr.shape}, expected (32, 32, 3)")
        out[row] = arr
    return out


def load_cifar10(
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    limit: int | None = None,
) -> CifarData:
    """Decode ``cifar10/{split}.npz`` into a uint8 array.

    Args:
        split: ``"train"`` (50,000 images, original CIFAR-10 order) or ``"test"`` (10,000, sorted
            by class in this copy: shuffle before splitting).
        data_dir: the data folder (else ``$NASHMOE_DATA``).
        cache_dir: where the decoded array is cached (else :func:`default_cache_dir`).
        use_cache: read / write the cache; a full decode takes ~10-20 s.
        limit: decode only the first ``limit`` images (never cached), e.g. for tests.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    path = data_file(f"cifar10/{split}.npz", data_dir)
    with np.load(path) as npz:
        labels = npz["y"].astype(np.int64)
        classes = tuple(str(c) for c in npz["classes"])
        n = len(labels)
        n_use = n if limit is None else min(limit, n)
        indices = np.arange(n_use, dtype=np.int64)
        cache = None
        if use_cache and limit is None:
            stat = path.stat()
            root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
            cache = root / f"cifar10-{split}-{n}-{stat.st_size}.npy"
            if cache.exists():
                images = np.load(cache)
                if images.shape == (n, 32, 32, 3) and images.dtype == np.uint8:
                    return CifarData(images, labels, classes, indices)
        offsets = npz["offsets"]
        if len(offsets) != n + 1:
            raise ValueError(f"{path}: {len(offsets)} offsets for {n} labels (want N + 1)")
        images = _decode_jpegs(npz["jpeg"], offsets, indices)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, images)
        tmp.replace(cache)
    return CifarData(images, labels[:n_use], classes, indices)


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
