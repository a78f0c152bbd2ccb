"""Pre-processing variants: order, equalisation and local contrast, asserted on values."""

from __future__ import annotations

import numpy as np
import pytest

from ctseg.drr import preprocess


def test_none_is_minmax_and_preserves_order():
    rng = np.random.default_rng(0)
    img = rng.normal(100.0, 30.0, (40, 50))
    out = preprocess.apply(img, "none")
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    order = np.argsort(img.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)
    np.testing.assert_allclose(out, (img - img.min()) / (img.max() - img.min()), atol=1e-6)


@pytest.mark.parametrize("variant", preprocess.VARIANTS)
def test_range_dtype_determinism(variant):
    rng = np.random.default_rng(1)
    img = rng.random((64, 48)) ** 3 * 1000
    a = preprocess.apply(img, variant)
    b = preprocess.apply(img.copy(), variant)
    assert a.dtype == np.float32 and a.shape == img.shape
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.max() > 0.5
    np.testing.assert_array_equal(a, b)


def test_global_equalises_a_skewed_ramp():
    x = np.linspace(0, 1, 256)
    img = np.tile(x**4, (128, 1))  # strongly skewed histogram
    before, _ = np.histogram(preprocess.apply(img, "none"), bins=16, range=(0, 1))
    hist, _ = np.histogram(preprocess.apply(img, "global"), bins=16, range=(0, 1))
    expected = img.size / 16
    assert before.max() > 5 * expected  # the input is far from uniform
    assert np.abs(hist - expected).max() <= 0.07 * expected


def _tile_std(out: np.ndarray, sl) -> float:
    return float(out[sl].std())


def test_local_raises_contrast_of_dim_tile_more_than_global():
    rng = np.random.default_rng(2)
    h = w = 128
    # broad-histogram background (a ramp), a bright block, and a low-contrast dark tile
    img = np.tile(np.linspace(0.2, 1.0, w), (h, 1))
    img[64:, 64:] = 1.0
    tile = (slice(8, 40), slice(8, 40))
    img[tile] = 0.05 + 0.01 * rng.random((32, 32))
    none = preprocess.apply(img, "none")
    glob = preprocess.apply(img, "global")
    loc = preprocess.apply(img, "local")
    s_none, s_glob, s_loc = (_tile_std(o, tile) for o in (none, glob, loc))
    assert s_loc > 1.5 * s_glob, (s_none, s_glob, s_loc)
    assert s_loc > 5 * s_none


def test_clahe_flat_image_and_unknown_variant():
    assert np.all(preprocess.apply(np.full((10, 10), 7.0), "local") == 0)
    with pytest.raises(ValueError, match="unknown"):
        preprocess.apply(np.zeros((4, 4)), "sharpen")
    with pytest.raises(ValueError, match="2D"):
        preprocess.apply(np.zeros((2, 4, 4)), "none")
