"""Field of view and storage: crops keep exact truth for the levels they show; 48 orientations.

The crop test compares a cropped phantom with the same anatomy on a larger grid that holds
every level whole, on the same voxel lattice: the label maps must agree voxel for voxel, and a
level must count as visible exactly when more than half of its (uncropped) voxels are inside.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from ctseg.phantom import (
    ORIENTATIONS,
    PhantomParams,
    crop_to_run,
    generate,
    reorient,
    write_phantom_case,
)
from ctseg.phantom.generate import layout_of

SP = 3.0
FULL = {
    "fit": False,
    "body_scale": 1.0,
    "first_level": "T1",
    "last_level": "L5",
    "noise_hu": 0.0,
    "blur_mm": 0.0,
    "scoliosis_mm": 12.0,
}


def _grid(z_top: float, z_bottom: float) -> dict:
    nz = int(round((z_top - z_bottom) / SP)) + 1
    return {
        "shape": (120, 110, nz),
        "spacing_mm": (SP,) * 3,
        "origin_mm": (-178.5, -170.5, z_bottom),
    }


@pytest.fixture(scope="module")
def full():
    lay = layout_of(3, FULL)
    z_top = SP * np.ceil((lay.z_extent(7)[1] + 15) / SP)
    z_bottom = SP * np.floor((lay.z_extent(26)[0] - 5) / SP)
    return lay, generate(3, {**FULL, **_grid(z_top, z_bottom)})


@pytest.mark.parametrize(
    ("top_level", "bottom_level", "offset"), [(12, 17, 0.0), (17, 24, -0.3), (9, 14, 0.3)]
)
def test_crop_keeps_truth_for_the_levels_it_shows(full, top_level, bottom_level, offset):
    lay, ph = full
    assert ph.info["visible_fraction"]["C7"] == 1.0 and ph.info["visible"][-1] == "sacrum"
    # crop edges through two vertebrae (offset x height from their centres), on the full
    # grid's voxel lattice
    z_top = lay.z_c[top_level] + offset * lay.H[top_level]
    z_bottom = lay.z_c[bottom_level] + offset * lay.H[bottom_level]
    z_top = ph.origin[2] + SP * np.floor((z_top - ph.origin[2]) / SP)
    z_bottom = ph.origin[2] + SP * np.ceil((z_bottom - ph.origin[2]) / SP)
    crop = generate(3, {**FULL, **_grid(z_top, z_bottom)})
    k0 = int(round((z_bottom - ph.origin[2]) / SP))
    sub = ph.labels[k0 : k0 + crop.labels.shape[0]]
    # visibility from the full label map: share of each level's voxels inside the crop
    full_counts = np.bincount(ph.labels.ravel(), minlength=29)
    sub_counts = np.bincount(sub.ravel(), minlength=29)
    want = [k for k in lay.seq if full_counts[k] and sub_counts[k] / full_counts[k] > 0.5]
    assert [c["label"] for c in crop.centroids] == sorted(want)
    whole = [k for k in lay.seq if full_counts[k] and sub_counts[k] == full_counts[k]]
    assert set(whole) <= set(want) and len(whole) >= 3
    if offset < 0:  # cut low through the top level: most of it is outside, so hidden
        assert top_level not in want and bottom_level in want
    if offset > 0:
        assert top_level in want and bottom_level not in want
    assert len(want) >= 4
    # labels: identical where visible, 0 where the level is hidden
    np.testing.assert_array_equal(crop.labels, np.where(np.isin(sub, want), sub, 0))
    # bone of hidden levels is still there (HU), just unlabelled
    hidden = np.isin(sub, [top_level, bottom_level]) & ~np.isin(sub, want)
    if hidden.any():
        assert (crop.hu[hidden] > 150).mean() > 0.95
    # centroids: the full ones for whole levels, the visible part's centre for cut ones
    by = {c["label"]: c for c in ph.centroids}
    zz = crop.origin[2] + SP * np.arange(crop.labels.shape[0])
    for c in crop.centroids:
        k = c["label"]
        got = np.array([c["x"], c["y"], c["z"]])
        if sub_counts[k] == full_counts[k]:
            np.testing.assert_allclose(got, [by[k]["x"], by[k]["y"], by[k]["z"]], atol=1e-6)
        else:
            kk = np.nonzero(sub == k)[0]
            assert got[2] == pytest.approx(zz[kk].mean(), abs=1e-6)


def test_crop_centroids_json(tmp_path, full):
    lay, _ = full
    params = {**FULL, **_grid(lay.z_c[14] - 1.0, lay.z_c[22] + 1.0)}
    write_phantom_case(tmp_path / "c", 3, params)
    rows = json.loads((tmp_path / "c" / "centroids.json").read_text())
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c" / "labels.nii.gz")))
    assert [r["label"] for r in rows] == sorted(set(np.unique(labels).tolist()) - {0})
    assert 15 in [r["label"] for r in rows] and 21 in [r["label"] for r in rows]


@pytest.mark.parametrize(
    ("first", "last", "cuts"),
    [
        ("T4", "T9", (0.0, 1.0)),
        ("C1", "C6", (1.0, 0.0)),
        ("T11", "S", (0.5, 1.0)),
        ("C4", "L2", (1.0, 1.0)),
    ],
)
def test_crop_to_run_shows_exactly_the_run(first, last, cuts):
    p = crop_to_run(
        PhantomParams(first_level=first, last_level=last, spacing_mm=(4.0, 4.0, 3.0), noise_hu=0.0),
        cut_top=cuts[0],
        cut_bottom=cuts[1],
        margin_mm=10.0,
    )
    assert not p.fit and p.body_scale is not None and p.spacing_mm == (4.0, 4.0, 3.0)
    ph = generate(11, p, progress=False)
    assert ph.info["visible"][0] == first and ph.info["visible"][-1] == last.replace("S", "sacrum")
    assert len(ph.info["visible"]) == len(p.levels)  # neighbours cut, but less than half seen
    ids = sorted(c["label"] for c in ph.centroids)
    assert ids == sorted(p.levels) and np.unique(ph.labels).tolist() == [0, *ids]


TINY = {"shape": (30, 26, 36), "spacing_mm": (12.0, 11.0, 10.0), "noise_hu": 15.0}


@pytest.fixture(scope="module")
def reference():
    return generate(2, TINY)


def test_all_48_orientations_store_the_same_world_image(reference):
    assert len(set(ORIENTATIONS)) == 48 and ORIENTATIONS[0] == "LPS"
    ref_hu, ref_lab = reference.image("hu"), reference.image("labels")
    dets = set()
    for code in ORIENTATIONS:
        ph = generate(2, {**TINY, "orientation": code}, progress=False)
        m = np.array(ph.direction).reshape(3, 3)
        dets.add(round(float(np.linalg.det(m))))
        assert sorted(ph.hu.shape) == sorted(reference.hu.shape)
        assert ph.info["orientation"] == code and ph.centroids == reference.centroids
        for img, ref in ((ph.image("hu"), ref_hu), (ph.image("labels"), ref_lab)):
            back = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, -2000)
            np.testing.assert_array_equal(
                sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ref), err_msg=code
            )
        # the stored first axis points where the code says
        first = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
        a, s = first[code[0]]
        assert m[a, 0] == s
    assert dets == {1, -1}


def test_reorient_round_trip_geometry():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 100, (5, 6, 7))
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 2.0, 3.0))
    img.SetOrigin((10.0, 20.0, 30.0))
    for code in ("RAS", "PIR", "SAR", "ILA"):
        out, sp, org, d = reorient(arr, code, img.GetSpacing(), img.GetOrigin(), img.GetDirection())
        o = sitk.GetImageFromArray(out)
        o.SetSpacing(sp)
        o.SetOrigin(org)
        o.SetDirection(d)
        # SimpleITK's own reorientation of the stored image back to LPS gives the original
        back = sitk.DICOMOrient(o, "LPS")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
        np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing())
        assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(d) == code


def _read_series(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("code", ["PIL", "RAS", "LPI", "SAR"])
def test_stored_case_round_trips_through_dicom(tmp_path, reference, code):
    params = {**TINY, "orientation": code}
    write_phantom_case(tmp_path / code, 2, params)
    img = _read_series(tmp_path / code / "dicom")
    labels = sitk.ReadImage(str(tmp_path / code / "labels.nii.gz"))
    # labels share the image's grid exactly
    np.testing.assert_allclose(labels.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetDirection(), img.GetDirection(), atol=1e-6)
    assert labels.GetSize() == img.GetSize()
    ref = reference.image("hu")
    back = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, -2000)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), reference.hu)
    back = sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), reference.labels)
    # in-plane axes as requested; a left-handed code keeps its slice order in InstanceNumber
    code_read = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())
    assert code_read[:2] == code[:2]


@pytest.mark.slow
def test_512_by_512_by_300_at_0_8_mm_in_sane_time_and_memory():
    import resource
    import time

    t0 = time.perf_counter()
    ph = generate(
        5,
        {
            "shape": (512, 512, 300),
            "spacing_mm": (0.8, 0.8, 0.8),
            "fit": False,
            "first_level": "T9",
            "last_level": "L3",
            "body_scale": 1.1,
            "implants": ["L1", "L2"],
            "orientation": "PIL",
        },
    )
    elapsed = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"512x512x300 at 0.8 mm: {elapsed:.1f} s, peak RSS {peak_gb:.2f} GB")
    assert ph.hu.shape == (512, 300, 512)  # PIL: x is the slowest stored axis
    assert ph.info["visible"] == ["T9", "T10", "T11", "T12", "L1", "L2", "L3"]
    assert elapsed < 240 and peak_gb < 4.0
