"""Augmentations: known geometry of the fused affine, image/label alignment, reproducibility."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import ndimage

from ctseg.core.normalise import hu_to_float
from ctseg.training.augment import (
    AlignedFlip,
    Float32GaussianNoise,
    GaussianBlur,
    RotateScale,
    affine_matrix,
    augment_pair,
    build_augmentation,
    normalise_augment_config,
    rotate_scale,
)


def box_pair(shape=(24, 24, 24), lo=(6, 4, 12), hi=(12, 10, 20)):
    img = np.zeros(shape, np.float32)
    lab = np.zeros(shape, np.uint8)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    img[sl] = 1.0
    lab[sl] = 7
    return img, lab


def test_hu_to_float_window():
    hu = np.array([-2000, -1000, 500, 2000, 5000], np.int16)
    np.testing.assert_allclose(hu_to_float(hu), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(hu_to_float(hu, (-1000, 4000)), [0, 0, 0.3, 0.6, 1])
    assert hu_to_float(hu).dtype == np.float32


def test_rotation_by_90_about_z_is_rot90_in_yx_plane():
    img, lab = box_pair()
    m = affine_matrix((90.0, 0.0, 0.0), 1.0)
    out = rotate_scale(lab, m, order=0)
    ref = np.rot90(lab, k=1, axes=(1, 2))
    ref_other = np.rot90(lab, k=-1, axes=(1, 2))
    assert np.array_equal(out, ref) or np.array_equal(out, ref_other)
    assert out.dtype == np.uint8


def test_scale_two_doubles_a_centred_box():
    lab = np.zeros((33, 33, 33), np.uint8)
    lab[14:19, 14:19, 14:19] = 1  # 5 voxels wide, centred on 16
    out = rotate_scale(lab, affine_matrix((0, 0, 0), 2.0), order=0)
    # output voxel o samples input 16 + (o - 16) / 2: o = 12..20 -> 14..18 (inside the box);
    # o = 11 and 21 sample the box edge exactly (ambiguous), o <= 10 and o >= 22 fall outside
    assert out[12:21, 12:21, 12:21].all()
    assert out.sum() <= 11**3
    assert not out[:11].any() and not out[22:].any() and not out[:, :, :11].any()


@pytest.mark.parametrize("seed", range(6))
def test_rotate_scale_keeps_label_on_bright_voxels(seed):
    img, lab = box_pair()
    t = RotateScale(rotate_deg=(30, 20, 20), scale=(0.8, 1.2), always_apply=True)
    flip = AlignedFlip(axes=(0, 1, 2), always_apply=True)
    random.seed(seed)
    data = t(True, [["image"], ["mask"]], image=img, mask=lab)
    data = flip(True, [["image"], ["mask"]], **data)
    bright, labelled = data["image"] > 0.5, data["mask"] == 7
    assert labelled.sum() > 50
    dice = 2 * (bright & labelled).sum() / (bright.sum() + labelled.sum())
    assert dice > 0.9
    # the label map stays a label map: no blended ids
    assert set(np.unique(data["mask"]).tolist()) <= {0, 7}


@pytest.mark.parametrize("seed", range(8))
def test_aligned_flip_flips_image_and_mask_identically(seed):
    img, lab = box_pair()
    random.seed(seed)
    data = AlignedFlip(axes=(0, 1, 2), always_apply=True)(
        True, [["image"], ["mask"]], image=img, mask=lab
    )
    assert np.array_equal(data["image"] > 0.5, data["mask"] == 7)


def test_gaussian_blur_matches_scipy():
    rng = np.random.default_rng(0)
    img = rng.random((10, 12, 14)).astype(np.float32)
    out = GaussianBlur((0.7, 0.7)).apply(img, sigma=0.7)
    np.testing.assert_allclose(out, ndimage.gaussian_filter(img, 0.7, mode="nearest"), rtol=1e-6)


def test_augment_pair_reproducible_and_restores_global_state():
    img, lab = box_pair()
    compose = build_augmentation({"p_affine": 1.0, "p_noise": 1.0, "p_blur": 1.0, "p_flip": 1.0})
    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    a = augment_pair(img, lab, compose, 5)
    after = (random.random(), np.random.random())
    assert before == after
    b = augment_pair(img, lab, compose, 5)
    c = augment_pair(img, lab, compose, 6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.float32 and a[1].dtype == np.uint8
    # noise was added to the image only: the label is still exactly {0, 7}
    assert set(np.unique(a[1]).tolist()) <= {0, 7}


def test_short_config_forms():
    c = normalise_augment_config(
        {"rotate_deg": 8, "noise_std": 0.03, "blur_sigma": 1.0, "scale": [0.9, 1.1], "flip": False}
    )
    assert c["rotate_deg"] == [8.0, 8.0, 8.0]
    assert c["noise_std"] == [0.0, 0.03] and c["blur_sigma"] == [0.0, 1.0]
    assert c["flip_axes"] == [] and "flip" not in c
    assert normalise_augment_config({"flip": True})["flip_axes"] == [2]
    assert normalise_augment_config({"scale": 0.1})["scale"] == pytest.approx([0.9, 1.1])


@pytest.mark.parametrize("angles,scale", [((8.0, -5.0, 3.0), 1.07), ((0.0, 20.0, 0.0), 0.9)])
def test_rotate_scale_matches_scipy_affine_transform_inside_the_volume(angles, scale):
    """Independent reference: scipy's affine_transform with the same inverse matrix and centre."""
    rng = np.random.default_rng(3)
    img = ndimage.gaussian_filter(rng.random((40, 36, 32)), 2).astype(np.float32)
    m = affine_matrix(angles, scale)
    centre = (np.asarray(img.shape, float) - 1) / 2
    ref = ndimage.affine_transform(img, m, offset=centre - m @ centre, order=1, mode="nearest")
    out = rotate_scale(img, m, order=1)
    assert out.dtype == np.float32 and out.shape == img.shape
    inner = (slice(8, -8),) * 3  # away from the border, where the two treat outside differently
    np.testing.assert_allclose(out[inner], ref[inner], atol=1e-5)


def test_float32_noise_has_the_requested_spread_and_dtype():
    t = Float32GaussianNoise(var_limit=(0.02**2, 0.02**2), always_apply=True)
    img = np.full((40, 40, 40), 0.5, np.float32)
    random.seed(0)
    out = t(True, [["image"], ["mask"]], image=img)["image"]
    assert out.dtype == np.float32
    assert abs(float(out.mean()) - 0.5) < 1e-3
    assert abs(float(out.std()) - 0.02) < 5e-4


def test_unknown_augment_key_is_an_error_naming_it():
    from ctseg.core.errors import ConfigError
    from ctseg.training.augment import build_augmentation

    with pytest.raises(ConfigError, match="'rotate'"):
        build_augmentation({"rotate": 10})


def test_intensity_shift_scales_and_shifts_the_image_only():
    from ctseg.training.augment import augment_pair, build_augmentation

    img = np.linspace(0, 1, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    lab = (img > 0.5).astype(np.uint8)
    off = {"p_affine": 0.0, "p_flip": 0.0, "p_blur": 0.0, "p_noise": 0.0}
    cfg = {**off, "intensity_scale": [1.2, 1.2], "intensity_shift": [0.1, 0.1], "p_intensity": 1.0}
    out, out_lab = augment_pair(img, lab, build_augmentation(cfg), seed=3)
    np.testing.assert_allclose(out, img * 1.2 + 0.1, rtol=1e-6)
    assert np.array_equal(out_lab, lab)
