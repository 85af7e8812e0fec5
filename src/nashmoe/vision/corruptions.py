"""CIFAR-10-C-style common corruptions of 32×32 images, reimplemented in numpy / scipy / Pillow.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019 (arXiv 1903.12261), built CIFAR-10-C from the 10,000 CIFAR-10 test images
with 15 corruptions at 5 severities. Every per-severity constant below is the one of their CIFAR
script (``ImageNet-C/create_c/make_cifar_c.py`` in github.com/hendrycks/robustness), which differs
from ImageNet-C's (those are far too strong at 32 pixels). The recipes are reimplemented here,
batched over images, with numpy, scipy and Pillow only (no OpenCV, scikit-image or ImageMagick):

- OpenCV / scikit-image steps are rebuilt from their definitions (``cv2.filter2D`` and
  ``cv2.GaussianBlur`` as correlations with reflect-101 borders, ``skimage.filters.gaussian`` as
  ``scipy.ndimage.gaussian_filter`` with mode ``nearest``, ``cv2.warpAffine`` as a bilinear inverse
  map, skimage's HSV round trip for ``brightness`` as the equivalent per-pixel rescaling).
- **Substitutes** (the original ingredient cannot be had offline): ``motion_blur`` and the streaks
  of ``snow`` used ImageMagick's ``MotionBlurImage`` through Wand; here the same kernel is rebuilt
  (a one-sided Gaussian of width ``2⌈radius⌉ + 1`` along the blur angle, integer offsets rounded as
  ImageMagick does, edge pixels repeated) but it is not bit-identical to ImageMagick. ``frost``
  blended six frost photographs shipped with the original code; here five procedural ice
  textures (ridged multi-octave noise tinted blue-white, a fixed seed) stand in for them, so frost
  errors are *not* comparable with published CIFAR-10-C numbers.

As published, severities are not all monotone in pixel change: ``elastic_transform``'s severity 1
has the largest affine jitter and no elastic field, so its mean pixel change falls with severity.

Results are converted back to uint8 by truncation, as the published script does (``np.uint8`` of a
float array). :func:`corrupt` is deterministic for a given ``seed``: the random stream is seeded by
``(seed, corruption index, severity)``, so corruptions and severities get independent streams.
``jpeg_compression`` depends on the installed libjpeg (deterministic for one installation).
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np

from nashmoe._optional import require

__all__ = ["CORRUPTIONS", "CORRUPTION_FAMILIES", "SEVERITIES", "corrupt"]

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
"""The 15 CIFAR-10-C corruptions, in the paper's order (noise, blur, weather, digital)."""

CORRUPTION_FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
"""The four families of Hendrycks & Dietterich (2019), each a tuple of corruption names."""

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# ---------------------------------------------------------------------------------------------
# Per-severity constants: CIFAR-10-C (make_cifar_c.py, Hendrycks & Dietterich 2019), severity 1..5.
# ---------------------------------------------------------------------------------------------
GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # std of additive noise on [0, 1] pixels
SHOT_NOISE = (500, 250, 100, 75, 50)  # Poisson rate per unit intensity
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # salt-and-pepper fraction (per value)
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # (radius, alias σ)
GLASS_BLUR = (  # (σ, max shift, iterations)
    (0.05, 1, 1),
    (0.25, 1, 1),
    (0.4, 1, 1),
    (0.25, 1, 2),
    (0.4, 1, 2),
)
MOTION_BLUR = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # (radius, σ), angle ~ U(−45°, 45°)
ZOOM_BLUR = tuple(np.arange(1, 1 + s, 0.01) for s in (0.06, 0.11, 0.16, 0.21, 0.26))
# np.arange exactly as published (1.06 itself is included by floating point: 7 factors at s=1).
SNOW = (  # (mean, std, zoom, threshold, blur radius, blur σ, image blend)
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # (image, frost) weights
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # (strength, wibble decay)
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to the HSV value
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor around the per-channel mean
ELASTIC = tuple(  # (displacement α, smoothing σ, affine jitter), in pixels: fractions of 32
    (32 * a, 32 * s, 32 * j)
    for a, s, j in (
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    )
)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # box-downsample factor
JPEG_QUALITY = (80, 65, 58, 50, 40)

_CHUNK = 256  # images processed at once (bounds the memory of the gathers)


def _ndimage():
    return require("scipy.ndimage", extra="vision", purpose="image corruptions", package="scipy")


def _pil():
    return require("PIL.Image", extra="vision", purpose="image corruptions", package="Pillow")


def corrupt(images: np.ndarray, name: str, severity: int, *, seed: int) -> np.ndarray:
    """Apply one CIFAR-10-C corruption to a batch of images.

    Args:
        images: uint8 ``[B, 32, 32, 3]`` RGB images (HWC).
        name: one of :data:`CORRUPTIONS`.
        severity: 1 (mild) … 5 (strong).
        seed: non-negative integer; the same inputs and seed give the same output.

    Returns:
        uint8 ``[B, 32, 32, 3]``.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)):
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(
            f"images must be uint8 [B, 32, 32, 3], got {images.dtype} {tuple(images.shape)}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([int(seed), CORRUPTIONS.index(name), int(severity)])
    fn = _FUNCTIONS[name]
    out = np.empty_like(images)
    for start in range(0, len(images), _CHUNK):
        chunk = images[start : start + _CHUNK]
        out[start : start + len(chunk)] = fn(chunk, severity - 1, rng)
    return out


def _to_uint8(x: np.ndarray, scale: float = 255.0) -> np.ndarray:
    """``np.uint8(clip(x · scale, 0, 255))``: truncation, as the published script converts."""
    return np.clip(x * scale, 0, 255).astype(np.uint8)


def _unit(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) / 255.0


# --------------------------------------------------------------------------------- helpers
def _gaussian(x: np.ndarray, sigma: float, *, mode: str = "nearest", truncate: float = 4.0):
    """Per-image, per-channel Gaussian blur of ``[B, H, W(, C)]`` (skimage's ``gaussian``)."""
    if sigma <= 0:
        return x.copy()
    sig = (0, sigma, sigma) + (0,) * (x.ndim - 3)
    return _ndimage().gaussian_filter(x, sig, mode=mode, truncate=truncate)


@lru_cache(maxsize=64)
def _zoom_matrix(size: int, factor: float) -> np.ndarray:
    """``[size, size]`` matrix of a clipped zoom along one axis: crop the centre ``⌈size/factor⌉``
    pixels, resize them by ``factor`` with linear interpolation (``scipy.ndimage.zoom``, order 1,
    corner-aligned grid: output shape ``round(crop · factor)``), keep the centre ``size`` pixels."""
    crop = math.ceil(size / factor)
    top = (size - crop) // 2
    out = round(crop * factor)
    coords = np.arange(out) * ((crop - 1) / (out - 1) if out > 1 else 0.0)
    trim = (out - size) // 2
    coords = coords[trim : trim + size]
    i0 = np.floor(coords).astype(np.int64)
    frac = coords - i0
    i1 = np.minimum(i0 + 1, crop - 1)
    m = np.zeros((size, size))
    rows = np.arange(size)
    np.add.at(m, (rows, top + i0), 1 - frac)
    np.add.at(m, (rows, top + i1), frac)
    return m


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom ``[B, H, H(, C)]`` into the centre by ``factor`` (bilinear) and crop back to H × H:
    the same numbers as ``scipy.ndimage.zoom`` on the centre crop, as one separable product."""
    m = _zoom_matrix(x.shape[1], float(factor))
    if x.ndim == 3:
        return m @ x @ m.T
    planes = np.ascontiguousarray(np.moveaxis(x, -1, 1))  # [B, C, H, W]
    return np.moveaxis(m @ planes @ m.T, 1, -1)


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick-style motion blur of ``[B, H, W(, C)]`` with one angle (degrees) per image.

    Output pixel p = Σ_i k_i · x(p + o_i), k_i ∝ exp(−i² / 2σ²) for i = 0 … 2⌈radius⌉ (one-sided),
    o_i = (⌈i cos θ − ½⌉, ⌈i sin θ − ½⌉) in (column, row); pixels beyond the border repeat the edge.
    """
    width = 2 * math.ceil(radius) + 1
    taps = np.arange(width, dtype=np.float64)
    kernel = np.exp(-(taps**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    theta = np.deg2rad(angles)[:, None]
    off_col = np.ceil(taps * np.cos(theta) - 0.5).astype(np.int64)  # [B, T]
    off_row = np.ceil(taps * np.sin(theta) - 0.5).astype(np.int64)
    b, h, w = x.shape[:3]
    bi = np.arange(b)[:, None, None]
    rows, cols = np.arange(h), np.arange(w)
    out = np.zeros_like(x, dtype=np.float64)
    for t in range(width):
        r = np.clip(rows[None, :] + off_row[:, t, None], 0, h - 1)
        c = np.clip(cols[None, :] + off_col[:, t, None], 0, w - 1)
        out += kernel[t] * x[bi, r[:, :, None], c[:, None, :]]
    return out


def _boundary(index: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map integer indices into ``[0, n)``: ``mirror`` (reflect-101, OpenCV's default border) or
    ``reflect`` (half-sample symmetric, scipy's ``reflect``)."""
    if mode == "mirror":
        if n == 1:
            return np.zeros_like(index)
        period = 2 * (n - 1)
        i = np.mod(index, period)
        return np.where(i > n - 1, period - i, i)
    period = 2 * n
    i = np.mod(index, period)
    return np.where(i >= n, period - 1 - i, i)


def _bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
    """Sample ``x [B, H, W, C]`` at fractional ``rows, cols [B, H, W]`` (bilinear)."""
    b, h, w = x.shape[:3]
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    ra, rb = _boundary(r0, h, mode), _boundary(r0 + 1, h, mode)
    ca, cb = _boundary(c0, w, mode), _boundary(c0 + 1, w, mode)
    bi = np.arange(b)[:, None, None]
    top = x[bi, ra, ca] * (1 - fc) + x[bi, ra, cb] * fc
    bottom = x[bi, rb, ca] * (1 - fc) + x[bi, rb, cb] * fc
    return top * (1 - fr) + bottom * fr


@lru_cache(maxsize=8)
def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The defocus kernel: a normalised disk of ``radius`` on a 17 × 17 grid, anti-aliased by a
    3 × 3 Gaussian of σ = ``alias_blur`` (``cv2.GaussianBlur``), trimmed to its support."""
    if radius <= 8:
        grid, ksize = np.arange(-8, 9), 3
    else:
        grid, ksize = np.arange(-math.ceil(radius), math.ceil(radius) + 1), 5
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-((np.arange(ksize) - (ksize - 1) / 2) ** 2) / (2 * alias_blur**2))
    g /= g.sum()
    nd = _ndimage()
    disk = nd.correlate1d(nd.correlate1d(disk, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")
    nz_r = np.flatnonzero(disk.any(axis=1))
    nz_c = np.flatnonzero(disk.any(axis=0))
    return disk[nz_r[0] : nz_r[-1] + 1, nz_c[0] : nz_c[-1] + 1]


@lru_cache(maxsize=1)
def _frost_textures(size: int = 96, count: int = 5) -> np.ndarray:
    """Procedural stand-ins for the frost photographs: float ``[count, size, size, 3]`` in 0..255.

    Ridged multi-octave noise (1 − |n| of smoothed Gaussian noise, sharpened) gives thin bright
    vein-like crystals on a darker background; tinted blue-white. Fixed seed: the textures are
    part of the corruption's definition, like the photographs were.
    """
    nd = _ndimage()
    rng = np.random.default_rng(20190220)
    tint = np.array([0.82, 0.9, 1.0])
    out = np.empty((count, size, size, 3))
    for k in range(count):
        tex = np.zeros((size, size))
        for sigma, weight in ((0.8, 0.35), (1.6, 0.3), (3.2, 0.2), (6.4, 0.15)):
            n = nd.gaussian_filter(rng.normal(size=(size, size)), sigma, mode="wrap")
            n /= n.std()
            tex += weight * np.clip(1 - np.abs(n), 0, 1) ** 3
        tex = (tex - tex.min()) / (tex.max() - tex.min())
        tex = np.clip(1.6 * tex, 0, 1)
        out[k] = 255.0 * tex[..., None] * tint
    return out


def _plasma(rng: np.random.Generator, count: int, size: int, decay: float) -> np.ndarray:
    """Diamond-square height maps ``[count, size, size]`` in [0, 1] (the fog of ImageNet-C)."""
    m = np.zeros((count, size, size))
    step, wibble = size, 100.0

    def wibbled_mean(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = m[:, 0:size:step, 0:size:step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares = squares + np.roll(squares, -1, axis=2)
        m[:, half:size:step, half:size:step] = wibbled_mean(squares)
        centres = m[:, half:size:step, half:size:step]
        corners = m[:, 0:size:step, 0:size:step]
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        m[:, 0:size:step, half:size:step] = wibbled_mean(left)
        top = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        m[:, half:size:step, 0:size:step] = wibbled_mean(top)
        step //= 2
        wibble /= decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def _per_image_pil(images: np.ndarray, fn) -> np.ndarray:
    Image = _pil()
    out = np.empty_like(images)
    for i, arr in enumerate(images):
        out[i] = np.asarray(fn(Image, Image.fromarray(arr)).convert("RGB"), dtype=np.uint8)
    return out


# ----------------------------------------------------------------------------- corruptions
def _gaussian_noise(images, s, rng):
    x = _unit(images)
    return _to_uint8(x + rng.normal(scale=GAUSSIAN_NOISE[s], size=x.shape))


def _shot_noise(images, s, rng):
    lam = SHOT_NOISE[s]
    return _to_uint8(rng.poisson(_unit(images) * lam) / lam)


def _impulse_noise(images, s, rng):
    x = _unit(images)
    hit = rng.random(x.shape) < IMPULSE_NOISE[s]
    salt = rng.random(x.shape) < 0.5
    return _to_uint8(np.where(hit, salt.astype(np.float64), x))


def _defocus_blur(images, s, rng):
    kernel = _disk_kernel(*DEFOCUS_BLUR[s])
    out = _ndimage().correlate(_unit(images), kernel[None, :, :, None], mode="mirror")
    return _to_uint8(out)


def _glass_blur(images, s, rng):
    # The published loop visits (row, col) from bottom-right to top-left and "swaps" pixel (row,
    # col) with (row + d_row, col + d_col), d ~ U{−δ, …, δ − 1}, by a tuple assignment on numpy
    # views of an RGB array, which copies instead of swapping: the pixel takes its neighbour's
    # value and the neighbour keeps its own. The neighbour (up and/or left) is always visited
    # later, so one pass is a gather from the unmodified image; that is what CIFAR-10-C holds,
    # and what is done here (vectorised).
    sigma, delta, iterations = GLASS_BLUR[s]
    x = _to_uint8(_gaussian(_unit(images), sigma))
    b, h = x.shape[:2]
    inner = np.arange(delta + 1, h - delta + 1)  # rows / cols 32 − δ … δ + 1
    bi = np.arange(b)[:, None, None]
    for _ in range(iterations):
        d_row = rng.integers(-delta, delta, size=(b, len(inner), len(inner)))
        d_col = rng.integers(-delta, delta, size=(b, len(inner), len(inner)))
        src = x[bi, inner[None, :, None] + d_row, inner[None, None, :] + d_col]
        x[:, inner[0] : inner[-1] + 1, inner[0] : inner[-1] + 1] = src
    return _to_uint8(_gaussian(_unit(x), sigma))


def _motion_blur_corruption(images, s, rng):
    radius, sigma = MOTION_BLUR[s]
    angles = rng.uniform(-45, 45, size=len(images))
    return _to_uint8(_motion_blur(images.astype(np.float64), radius, sigma, angles), 1.0)


def _zoom_blur(images, s, rng):
    planes = np.moveaxis(_unit(images), -1, 1).copy()  # [B, C, H, W]: one matmul per factor
    acc = planes.copy()
    for factor in ZOOM_BLUR[s]:
        m = _zoom_matrix(32, float(factor))
        acc += m @ planes @ m.T
    return _to_uint8(np.moveaxis(acc, 1, -1) / (len(ZOOM_BLUR[s]) + 1))


def _snow(images, s, rng):
    mean, std, zoom, threshold, radius, sigma, blend = SNOW[s]
    x = _unit(images)
    b = len(x)
    layer = rng.normal(loc=mean, scale=std, size=(b, 32, 32))
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = np.clip(layer, 0, 1)
    layer = np.floor(layer * 255) / 255  # 8-bit greyscale, as the published PIL round trip
    angles = rng.uniform(-135, -45, size=b)
    layer = np.round(_motion_blur(layer, radius, sigma, angles) * 255) / 255
    layer = layer[..., None]
    gray = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    x = blend * x + (1 - blend) * np.maximum(x, gray * 1.5 + 0.5)
    return _to_uint8(x + layer + np.rot90(layer, k=2, axes=(1, 2)))


def _frost(images, s, rng):
    w_image, w_frost = FROST[s]
    textures = _frost_textures()
    size = textures.shape[1]
    b = len(images)
    which = rng.integers(0, len(textures), size=b)
    r0 = rng.integers(0, size - 32, size=b)
    c0 = rng.integers(0, size - 32, size=b)
    rows = r0[:, None] + np.arange(32)
    cols = c0[:, None] + np.arange(32)
    crops = textures[which[:, None, None], rows[:, :, None], cols[:, None, :]]
    return _to_uint8(w_image * images.astype(np.float64) + w_frost * crops, 1.0)


def _fog(images, s, rng):
    strength, decay = FOG[s]
    x = _unit(images)
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * _plasma(rng, len(x), 32, decay)[..., None]
    return _to_uint8(x * peak / (peak + strength))


def _brightness(images, s, rng):
    # HSV value V = max(R, G, B); raising V with H and S fixed scales the pixel by V'/V
    # (black pixels, S = 0, become grey V'), exactly skimage's rgb2hsv → V + c → hsv2rgb.
    x = _unit(images)
    v = x.max(axis=-1, keepdims=True)
    v_new = np.clip(v + BRIGHTNESS[s], 0, 1)
    scaled = x * (v_new / np.where(v > 0, v, 1.0))
    return _to_uint8(np.where(v > 0, scaled, v_new))


def _contrast(images, s, rng):
    x = _unit(images)
    means = x.mean(axis=(1, 2), keepdims=True)  # per image and channel
    return _to_uint8((x - means) * CONTRAST[s] + means)


def _elastic_transform(images, s, rng):
    alpha, sigma, jitter = ELASTIC[s]
    x = images.astype(np.float64) / 255.0
    b = len(x)
    # Random affine: three points (x = column, y = row) moved by U(−jitter, jitter).
    centre, half = 16.0, 10.0  # float32([32, 32]) // 2, min(32, 32) // 3
    src = np.array([[centre + half] * 2, [centre + half, centre - half], [centre - half] * 2])
    dst = src[None] + rng.uniform(-jitter, jitter, size=(b, 3, 2))
    ones = np.ones((3, 1))
    forward = np.linalg.solve(np.hstack([src, ones])[None], dst)  # [B, 3, 2]: [x y 1] @ F = x'
    lin, shift = forward[:, :2].transpose(0, 2, 1), forward[:, 2]  # x' = lin @ x + shift
    inv = np.linalg.inv(lin)
    grid_r, grid_c = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
    pts = np.stack([grid_c, grid_r], axis=-1)[None] - shift[:, None, None]  # [B, 32, 32, 2]
    srcpts = np.einsum("bij,bhwj->bhwi", inv, pts)
    x = _bilinear(x, srcpts[..., 1], srcpts[..., 0], "mirror")
    # Smooth random displacement field.
    dx = _gaussian(rng.uniform(-1, 1, size=(b, 32, 32)), sigma, mode="reflect", truncate=3) * alpha
    dy = _gaussian(rng.uniform(-1, 1, size=(b, 32, 32)), sigma, mode="reflect", truncate=3) * alpha
    out = _bilinear(x, grid_r[None] + dy, grid_c[None] + dx, "reflect")
    return _to_uint8(out)


def _pixelate(images, s, rng):
    small = int(32 * PIXELATE[s])

    def fn(Image, img):
        box = Image.Resampling.BOX
        return img.resize((small, small), box).resize((32, 32), box)

    return _per_image_pil(images, fn)


def _jpeg_compression(images, s, rng):
    def fn(Image, img):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY[s])
        buf.seek(0)
        out = Image.open(buf)
        out.load()
        return out

    return _per_image_pil(images, fn)


_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur_corruption,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}
assert tuple(_FUNCTIONS) == CORRUPTIONS
