"""CIFAR-10 (Krizhevsky 2009): decode the JPEG-in-``.npz`` copy into a uint8 array.

The shared copy stores the images as JPEGs inside an ``.npz`` (``jpeg``: all JPEG files
concatenated, ``offsets``: image i is ``jpeg[offsets[i]:offsets[i + 1]]``, ``y``, ``classes``);
:func:`load_cifar10` decodes it once with Pillow and caches the uint8 array. Used by the
learning-to-defer experiments (:mod:`nashmoe.defer`) and the image MoE experiment
(:mod:`nashmoe.vision`).

Files are found only through ``data_dir`` or ``$NASHMOE_DATA`` (:func:`nashmoe._paths.data_file`).
The decoded-image cache lives in ``cache_dir``, ``$NASHMOE_CACHE`` or ``~/.cache/nashmoe``, never
inside the repository.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nashmoe._optional import require
from nashmoe._paths import data_file

__all__ = ["CACHE_ENV_VAR", "CifarData", "cifar10_labels", "default_cache_dir", "load_cifar10"]

CACHE_ENV_VAR = "NASHMOE_CACHE"


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


def cifar10_labels(split: str = "train", *, data_dir: str | os.PathLike[str] | None = None):
    """The int64 labels of ``cifar10/{split}.npz`` (no decoding)."""
    _check_split(split)
    with np.load(data_file(f"cifar10/{split}.npz", data_dir)) as npz:
        return npz["y"].astype(np.int64)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_cifar10(
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    limit: int | None = None,
    indices: np.ndarray | None = None,
) -> CifarData:
    """Decode ``cifar10/{split}.npz`` into a uint8 array.

    Args:
        split: ``"train"`` (50,000 images, original CIFAR-10 order) or ``"test"`` (10,000, sorted
            by class in this copy: shuffle before splitting).
        data_dir: the data folder (else ``$NASHMOE_DATA``).
        cache_dir: where the decoded array is cached (else :func:`default_cache_dir`).
        use_cache: read / write the cache; a full decode takes ~10-20 s.
        limit: decode only the first ``limit`` images (never cached), e.g. for tests.
        indices: only these images, in this order (taken from the cache when it exists, else
            decoded one by one; never writes the cache). Not together with ``limit``.
    """
    _check_split(split)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    if limit is not None and indices is not None:
        raise ValueError("pass limit or indices, not both")
    path = data_file(f"cifar10/{split}.npz", data_dir)
    with np.load(path) as npz:
        labels = npz["y"].astype(np.int64)
        classes = tuple(str(c) for c in npz["classes"])
        n = len(labels)
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            if indices.ndim != 1 or (len(indices) and (indices.min() < 0 or indices.max() >= n)):
                raise ValueError(f"indices must be a 1-D array of positions in [0, {n})")
        else:
            indices = np.arange(n if limit is None else min(limit, n), dtype=np.int64)
        cache = None
        if use_cache and limit is None:
            stat = path.stat()
            root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
            cache = root / f"cifar10-{split}-{n}-{stat.st_size}.npy"
            if cache.exists():
                images = np.load(cache, mmap_mode="r")
                if images.shape == (n, 32, 32, 3) and images.dtype == np.uint8:
                    return CifarData(
                        np.ascontiguousarray(images[indices]), labels[indices], classes, indices
                    )
            if len(indices) != n:
                cache = None  # a partial decode is never cached
        offsets = npz["offsets"]
        if len(offsets) != n + 1:
            raise ValueError(f"{path}: {len(offsets)} offsets for {n} labels (want N + 1)")
        images = _decode_jpegs(npz["jpeg"], offsets, indices)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, images)
        tmp.replace(cache)
    return CifarData(images, labels[indices], classes, indices)
