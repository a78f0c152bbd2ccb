"""Augmentation cubes: layout, resampling, crop logic, reproducible bytes, QC, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from ctseg.core.errors import InputError
from ctseg.core.normalise import hu_to_float
from ctseg.training.cubes import build_cube, check_cube, pad_crop_to, read_provenance

NO_AUG = {"p_affine": 0.0, "p_flip": 0.0, "p_blur": 0.0, "p_noise": 0.0}


def write_box_case(
    d: Path, name: str, shape_zyx=(32, 24, 20), spacing=(2.0, 2.0, 2.0), ids=(8, 9, 10), seed=0
) -> dict:
    """A synthetic case: soft tissue block with bright labelled boxes stacked along z."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    hu = np.full(shape_zyx, -1000, np.int16)
    lab = np.zeros(shape_zyx, np.uint8)
    z, y, x = shape_zyx
    hu[:, 2:-2, 2:-2] = 0
    h = z // (len(ids) + 1)
    for k, i in enumerate(ids):
        z0 = h // 2 + k * h
        sl = (
            slice(z0 + 1, z0 + h - 1),
            slice(y // 2 - 4, y // 2 + 4),
            slice(x // 2 - 4, x // 2 + 4),
        )
        hu[sl] = 700 + 50 * k
        lab[sl] = i
    hu = (hu + rng.normal(0, 20, hu.shape)).astype(np.int16)
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing(spacing)
    ct.SetOrigin((10.0, -5.0, 3.0))
    lb = sitk.GetImageFromArray(lab)
    lb.CopyInformation(ct)
    mt = sitk.GetImageFromArray((lab == ids[0]).astype(np.uint8))
    mt.CopyInformation(ct)
    item = {
        "case": name,
        "ct": str(d / f"{name}_ct.nii.gz"),
        "labels": str(d / f"{name}_labels.nii.gz"),
        "metal": str(d / f"{name}_metal.nii.gz"),
    }
    sitk.WriteImage(ct, item["ct"])
    sitk.WriteImage(lb, item["labels"])
    sitk.WriteImage(mt, item["metal"])
    return item


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("cases")
    return [write_box_case(d, "a", seed=0), write_box_case(d, "b", seed=1)]


RECIPE = {"task": "vertebrae", "spacing_mm": [2.0, 2.0, 2.0], "patch": [16, 24, 32], "copies": 2}


def test_cube_layout_and_original_sample(cases, tmp_path):
    out = tmp_path / "c.h5"
    build_cube(cases, out, RECIPE, seed=7)
    with h5py.File(out) as h5:
        assert h5["image"].shape == (6, 32, 24, 16) and h5["image"].dtype == np.float32
        assert h5["label"].shape == (6, 32, 24, 16) and h5["label"].dtype == np.uint8
        assert h5["image"].compression == "gzip" and h5["image"].chunks == (1, 32, 24, 16)
        assert h5["case_index"][:].tolist() == [0, 0, 0, 1, 1, 1]
        assert h5["copy_index"][:].tolist() == [0, 1, 2, 0, 1, 2]
        # sample 0 is the un-augmented original: the CT normalised, centre-cropped in x (20->16)
        hu = sitk.GetArrayFromImage(sitk.ReadImage(cases[0]["ct"]))
        lab = sitk.GetArrayFromImage(sitk.ReadImage(cases[0]["labels"]))
        np.testing.assert_allclose(h5["image"][0], hu_to_float(hu)[:, :, 2:18], atol=1e-6)
        assert np.array_equal(h5["label"][0], lab[:, :, 2:18])
        # augmented copies differ from the original but keep the label set
        assert not np.array_equal(h5["image"][1], h5["image"][0])
        assert set(np.unique(h5["label"][1]).tolist()) <= {0, 8, 9, 10}
    prov = read_provenance(out)
    assert prov["cases"] == ["a", "b"] and prov["spacing_mm"] == [2.0, 2.0, 2.0]
    assert (
        prov["recipe"] == RECIPE
        and len(prov["sample_seeds"]) == 6
        and len(prov["config_hash"]) == 64
    )


def test_same_seed_same_bytes_other_seed_differs(cases, tmp_path):
    paths = [tmp_path / n for n in ("a.h5", "b.h5", "c.h5")]
    for p, s in zip(paths, (3, 3, 4), strict=True):
        build_cube(cases, p, RECIPE, seed=s)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert digest[0] == digest[1]
    assert digest[0] != digest[2]
    with h5py.File(paths[0]) as a, h5py.File(paths[2]) as c:
        assert np.array_equal(a["image"][0], c["image"][0])  # originals are not random
        assert not np.array_equal(a["image"][1], c["image"][1])


def test_resampling_to_coarser_spacing(cases, tmp_path):
    out = tmp_path / "c.h5"
    recipe = {
        "task": "vertebrae",
        "spacing_mm": [4.0, 4.0, 4.0],
        "patch": [10, 12, 16],
        "copies": 0,
    }
    build_cube(cases[:1], out, recipe, seed=0)
    with h5py.File(out) as h5:
        lab = h5["label"][0]
    # 32x24x20 voxels at 2 mm -> 16x12x10 at 4 mm: the patch is exactly the volume
    src = sitk.GetArrayFromImage(sitk.ReadImage(cases[0]["labels"]))
    for lid in (8, 9, 10):
        assert abs((lab == lid).sum() * 8 - (src == lid).sum()) <= 0.35 * (src == lid).sum()
        zc_src = np.argwhere(src == lid)[:, 0].mean() * 2.0
        zc = np.argwhere(lab == lid)[:, 0].mean() * 4.0
        assert abs(zc - zc_src) < 2.5  # same physical position (mm)


def test_random_crops_are_foreground_biased(cases, tmp_path):
    out = tmp_path / "c.h5"
    recipe = {
        "task": "vertebrae",
        "spacing_mm": [2.0, 2.0, 2.0],
        "patch": [8, 8, 8],
        "copies": 6,
        "mode": "random",
        "fg_prob": 1.0,
        "augment": NO_AUG,
    }
    build_cube(cases, out, recipe, seed=1)
    with h5py.File(out) as h5:
        labels = h5["label"][:]
    assert labels.shape == (14, 8, 8, 8)
    assert all(lab[4, 4, 4] > 0 for lab in labels)  # every crop is centred on a labelled voxel


def test_metal_task_uses_binary_metal_mask(cases, tmp_path):
    out = tmp_path / "m.h5"
    build_cube(cases[:1], out, {**RECIPE, "task": "metal", "copies": 0}, seed=0)
    with h5py.File(out) as h5:
        lab = h5["label"][0]
    src = sitk.GetArrayFromImage(sitk.ReadImage(cases[0]["labels"]))[:, :, 2:18]
    assert np.array_equal(lab, (src == 8).astype(np.uint8))


def test_pad_crop_to():
    a = np.arange(5)
    assert pad_crop_to(a, (3,)).tolist() == [1, 2, 3]
    assert pad_crop_to(a, (7,)).tolist() == [0, 0, 1, 2, 3, 4, 0]
    assert pad_crop_to(a, (3,), centre=(0,)).tolist() == [0, 0, 1]


def test_check_cube_outputs(cases, tmp_path):
    out = tmp_path / "c.h5"
    build_cube(cases, out, RECIPE, seed=7)
    png, tsv = tmp_path / "qc.png", tmp_path / "qc.tsv"
    check_cube(out, png, tsv)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [r.split("\t") for r in tsv.read_text().splitlines()]
    assert rows[0] == ["index", "case", "copy", "voxels", "label", "count", "fraction"]
    with h5py.File(out) as h5:
        lab0 = h5["label"][0]
    counts = {int(r[4]): int(r[5]) for r in rows[1:] if r[0] == "0"}
    ids, n = np.unique(lab0, return_counts=True)
    assert counts == dict(zip(ids.tolist(), n.tolist(), strict=True))
    for i in range(6):
        assert sum(float(r[6]) for r in rows[1:] if r[0] == str(i)) == pytest.approx(1.0, abs=1e-4)


def test_missing_label_file_names_case_and_leaves_nothing(cases, tmp_path):
    bad = {**cases[1], "labels": str(tmp_path / "missing.nii.gz")}
    out = tmp_path / "sub" / "c.h5"
    with pytest.raises(InputError) as err:
        build_cube([cases[0], bad], out, RECIPE, seed=0)
    assert err.value.case == "b" and "missing.nii.gz" in str(err.value)
    assert list((tmp_path / "sub").iterdir()) == []


def test_grid_mismatch_is_input_error(cases, tmp_path):
    lab = sitk.ReadImage(cases[0]["labels"])
    small = sitk.RegionOfInterest(lab, [10, 10, 10], [0, 0, 0])
    p = tmp_path / "small.nii.gz"
    sitk.WriteImage(small, str(p))
    with pytest.raises(InputError, match="differs from the CT grid"):
        build_cube([{**cases[0], "labels": str(p)}], tmp_path / "c.h5", RECIPE, seed=0)


def test_provenance_is_json(cases, tmp_path):
    out = tmp_path / "c.h5"
    build_cube(cases[:1], out, {**RECIPE, "copies": 0}, seed=0)
    with h5py.File(out) as h5:
        assert json.loads(h5.attrs["provenance"])["task"] == "vertebrae"


def test_random_crops_keep_axes_the_crop_spans_centred(cases, tmp_path):
    """Crops as long as the volume along z (the whole spine) are never shifted along z."""
    out = tmp_path / "c.h5"
    recipe = {
        "task": "vertebrae",
        "spacing_mm": [2.0, 2.0, 2.0],
        "patch": [8, 8, 32],
        "copies": 5,
        "mode": "random",
        "fg_prob": 1.0,
        "augment": NO_AUG,
    }
    build_cube(cases[:1], out, recipe, seed=2)
    src = sitk.GetArrayFromImage(sitk.ReadImage(cases[0]["labels"]))
    with h5py.File(out) as h5:
        for lab in h5["label"][:]:
            # every labelled z range of the source is still there: no z shift
            assert np.array_equal(
                np.flatnonzero(lab.reshape(32, -1).max(1)),
                np.flatnonzero(src.reshape(32, -1).max(1)),
            )


def test_bone_negative_crops_centre_on_unlabelled_bone():
    """A crop drawn as a hard negative is centred on bone that carries no label and lies at
    least two voxels from any labelled voxel; foreground and uniform draws keep their shares."""
    from ctseg.core.config import CubeRecipe
    from ctseg.core.normalise import hu_to_float
    from ctseg.training.cubes import bone_negatives, choose_crop_centre

    hu = np.full((20, 20, 20), -800.0)
    label = np.zeros(hu.shape, np.uint8)
    hu[8:12, 8:12, 8:12], label[8:12, 8:12, 8:12] = 700.0, 9  # a vertebra
    hu[2:4, 2:18, 15:17] = 600.0  # a rib-like bar, unlabelled
    hu[8:12, 12:15, 8:12] = 600.0  # unlabelled bone touching the vertebra
    recipe = CubeRecipe.from_dict(
        {"mode": "random", "fg_prob": 0.5, "bone_neg_prob": 0.5, "patch": [8, 8, 8]}
    )
    image = hu_to_float(hu, recipe.hu_window)
    neg = bone_negatives(image, label, recipe)
    expected = np.zeros(hu.shape, bool)
    expected[2:4, 2:18, 15:17] = True
    expected[8:12, 14:15, 8:12] = True  # the part more than two voxels from the label
    assert np.array_equal(neg, expected)
    rng = np.random.default_rng(0)
    kinds = {"fg": 0, "neg": 0}
    for _ in range(400):
        c = choose_crop_centre(label, (8, 8, 8), rng, 0.5, neg, 0.5)
        kinds["fg" if label[c] else "neg"] += 1
        assert label[c] > 0 or neg[c]
    assert 150 < kinds["neg"] < 250
    assert bone_negatives(image, label, CubeRecipe.from_dict({"mode": "random"})) is None


def test_bone_negative_share_is_validated():
    from ctseg.core.config import ConfigError, CubeRecipe

    with pytest.raises(ConfigError, match="bone_neg_prob"):
        CubeRecipe.from_dict({"name": "v", "fg_prob": 0.8, "bone_neg_prob": 0.3})
