"""Models, augmentation, text encoding and the k-means patch features (against a naive loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nashmoe.defer.augment import random_crop_flip
from nashmoe.defer.features import fit_patch_kmeans
from nashmoe.defer.models import BagOfWordsClassifier, MLPHead, SmallCNN
from nashmoe.defer.text import build_vocab, encode, tokenize


def test_small_cnn_shapes_and_layouts() -> None:
    model = SmallCNN(13, width=4).eval()
    x = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    out = model(x)
    assert out.shape == (2, 13)
    torch.testing.assert_close(model(x.permute(0, 3, 1, 2).float()), out)
    with pytest.raises(ValueError, match="images"):
        model(x[0])


def test_mlp_head_and_bow() -> None:
    assert MLPHead(7, 5, hidden=0)(torch.randn(3, 7)).shape == (3, 5)
    assert MLPHead(7, 5, hidden=8)(torch.randn(3, 7)).shape == (3, 5)
    bow = BagOfWordsClassifier(10, 4, dim=3, hidden=5)
    tokens = torch.tensor([[2, 3, 0, 0], [0, 0, 0, 0]])
    out = bow(tokens)
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    # Padding does not change the mean embedding.
    torch.testing.assert_close(bow(torch.tensor([[2, 3]])), out[:1])
    with pytest.raises(ValueError, match="in_features"):
        MLPHead(0, 3)


def test_random_crop_flip() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 8 * 8 * 3, dtype=torch.int64).view(2, 8, 8, 3)
    out = random_crop_flip(x, g, padding=0)
    for i in range(2):  # without padding: identity or a mirror image
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(1))
    out = random_crop_flip(x, g, padding=2)
    assert out.shape == x.shape
    # Each output row is a (possibly flipped) window of the zero-padded input.
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (2, 2, 2, 2)).permute(0, 2, 3, 1)
    for i in range(2):
        found = any(
            torch.equal(out[i], win) or torch.equal(out[i], win.flip(1))
            for dy in range(5)
            for dx in range(5)
            for win in [padded[i, dy : dy + 8, dx : dx + 8]]
        )
        assert found


def test_text_encoding() -> None:
    toks = tokenize('RT @user: "You\'re" GREAT!! http://t.co/x &amp; more')
    assert "MENTIONTOKEN".lower() in toks and "urltoken" in toks
    assert "great" in toks and "you're" in toks and "!" in toks and "great_!" in toks
    vocab = build_vocab(["a b a", "a c"], min_count=2)
    assert vocab == {"a": 2}
    enc = encode(["a b", ""], vocab, max_len=3)
    assert enc.tolist() == [[2, 1, 1], [0, 0, 0]]  # b and the bigram a_b are unknown


def naive_features(extractor, image: np.ndarray) -> np.ndarray:
    """Per-position loop: normalise, whiten, distances, triangle, quadrant sums."""
    p, s = extractor.patch, extractor.stride
    img = torch.as_tensor(image).permute(2, 0, 1).double() / 255.0
    side = (img.shape[1] - p) // s + 1
    k = extractor.centroids.shape[0]
    act = np.zeros((side, side, k))
    for r in range(side):
        for c in range(side):
            patch = img[:, r * s : r * s + p, c * s : c * s + p].reshape(-1)
            patch = patch - patch.mean()
            patch = patch / torch.sqrt(patch.var() + 10.0 / 255.0**2)
            w = (patch - extractor.mean.double()) @ extractor.whiten.double()
            d = torch.linalg.norm(w[None, :] - extractor.centroids.double(), dim=1)
            act[r, c] = torch.clamp(d.mean() - d, min=0).numpy()
    h = side // 2
    quads = [act[:h, :h], act[:h, h:], act[h:, :h], act[h:, h:]]
    return np.concatenate([q.sum((0, 1)) for q in quads])


@pytest.mark.parametrize("stride", [1, 3])
def test_kmeans_features_against_naive_loop(stride: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    ext = fit_patch_kmeans(
        images,
        num_centroids=5,
        patch=4,
        stride=stride,
        num_patches=400,
        iterations=3,
        seed=1,
        stats_images=12,
    )
    assert ext.num_features == 20
    raw = ext._raw(images[:2], batch_size=1)
    for i in range(2):
        np.testing.assert_allclose(
            raw[i].numpy(), naive_features(ext, images[i]), rtol=2e-4, atol=2e-4
        )
    feats = ext.transform(images)
    assert feats.shape == (12, 20)
    np.testing.assert_allclose(feats.mean(0).numpy(), 0, atol=1e-4)  # standardised on these
    with pytest.raises(ValueError, match="stride"):
        fit_patch_kmeans(images, stride=0)
