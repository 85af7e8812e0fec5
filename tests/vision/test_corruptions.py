"""CIFAR-10-C corruptions: shape, dtype, determinism, severity ordering, published noise scales."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("PIL")

from nashmoe.vision.corruptions import (
    CORRUPTIONS,
    GAUSSIAN_NOISE,
    SHOT_NOISE,
    _clipped_zoom,
    corrupt,
)

# Published geometric exception: elastic_transform's severity 1 has the largest affine jitter
# (0.08 · 32 px) and no elastic field, so its pixel change shrinks with severity.
NON_MONOTONE = {"elastic_transform"}


def scenes(n: int = 6, seed: int = 0) -> np.ndarray:
    """Natural-ish uint8 images: smooth colour blobs plus edges and a little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    out = np.empty((n, 32, 32, 3))
    for i in range(n):
        base = rng.uniform(0.2, 0.8, 3) + 0.3 * np.sin(6 * xx[..., None] * rng.uniform(0.5, 2, 3))
        square = (np.abs(xx - rng.uniform(0.3, 0.7)) < 0.2) & (np.abs(yy - 0.5) < 0.25)
        base[square] = rng.uniform(0, 1, 3)
        out[i] = base + 0.04 * rng.normal(size=(32, 32, 3))
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


IMAGES = scenes()


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def test_fifteen_corruptions() -> None:
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_determinism_and_severity(name: str) -> None:
    damage = {}
    for severity in (1, 5):
        out = corrupt(IMAGES, name, severity, seed=3)
        assert out.shape == IMAGES.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, corrupt(IMAGES, name, severity, seed=3))
        damage[severity] = mad(out, IMAGES)
    assert damage[1] > 0 and damage[5] > 0
    if name not in NON_MONOTONE:
        assert damage[5] > damage[1], damage
    # the input is never modified in place
    np.testing.assert_array_equal(IMAGES, scenes())


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "glass_blur", "fog", "snow"])
def test_seed_changes_random_corruptions(name: str) -> None:
    assert not np.array_equal(corrupt(IMAGES, name, 3, seed=0), corrupt(IMAGES, name, 3, seed=1))


def test_gaussian_noise_has_the_cifar10c_scale() -> None:
    gray = np.full((64, 32, 32, 3), 128, dtype=np.uint8)  # mid-gray: no clipping at 5 sigma
    for severity, c in enumerate(GAUSSIAN_NOISE, start=1):
        diff = (corrupt(gray, "gaussian_noise", severity, seed=0).astype(np.float64) - 128) / 255
        # truncation to uint8 adds ~U(-1, 0)/255: negligible next to c >= 0.04
        assert diff.std() == pytest.approx(c, rel=0.03)
    assert GAUSSIAN_NOISE == (0.04, 0.06, 0.08, 0.09, 0.10)  # CIFAR-10-C, not ImageNet-C


def test_shot_noise_is_poisson_with_the_cifar10c_rate() -> None:
    gray = np.full((64, 32, 32, 3), 128, dtype=np.uint8)
    x = 128 / 255
    for severity, lam in enumerate(SHOT_NOISE, start=1):
        diff = (corrupt(gray, "shot_noise", severity, seed=0).astype(np.float64) - 128) / 255
        assert diff.std() == pytest.approx(np.sqrt(x / lam), rel=0.05)


def test_contrast_and_brightness_definitions() -> None:
    out = corrupt(IMAGES, "contrast", 5, seed=0).astype(np.float64)
    x = IMAGES / 255.0
    means = x.mean(axis=(1, 2), keepdims=True)
    expected = np.floor(np.clip((x - means) * 0.15 + means, 0, 1) * 255)
    assert np.abs(out - expected).max() <= 1
    colors = pytest.importorskip("matplotlib.colors")
    hsv = colors.rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.3, 0, 1)
    ref = np.floor(np.clip(colors.hsv_to_rgb(hsv), 0, 1) * 255 + 1e-9)
    assert np.abs(corrupt(IMAGES, "brightness", 5, seed=0) - ref).max() <= 1


def test_clipped_zoom_matches_scipy() -> None:
    from scipy.ndimage import zoom

    x = np.random.default_rng(0).random((2, 32, 32, 3))
    for factor in (1.0, 1.06, 1.25, 1.75, 2.25):
        crop = int(np.ceil(32 / factor))
        top = (32 - crop) // 2
        ref = zoom(x[:, top : top + crop, top : top + crop], (1, factor, factor, 1), order=1)
        trim = (ref.shape[1] - 32) // 2
        np.testing.assert_allclose(
            _clipped_zoom(x, factor), ref[:, trim : trim + 32, trim : trim + 32], atol=1e-12
        )


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(IMAGES, "rain", 1, seed=0)
    for severity in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match="severity"):
            corrupt(IMAGES, "fog", severity, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(IMAGES.astype(np.float32), "fog", 1, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(IMAGES[0], "fog", 1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        corrupt(IMAGES, "fog", 1, seed=-1)
