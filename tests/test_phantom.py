"""Phantom generator and DICOM series writer: truth, geometry, determinism, round trips."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ctseg.cli import main as cli_main
from ctseg.core.labels import VERSE_IDS
from ctseg.ingest.dicomwrite import write_dicom_series
from ctseg.phantom import (
    Phantom,
    PhantomParams,
    Tissue,
    generate,
    write_phantom_case,
)

TINY = {"shape": (48, 40, 64), "spacing_mm": (7.0, 7.0, 7.0)}
DEFAULT = {"shape": (96, 80, 112), "spacing_mm": (4.0, 4.0, 4.0)}
CLEAN = {"noise_hu": 0.0, "blur_mm": 0.0}
T1_L5 = list(range(8, 25))


def _world(ph: Phantom, idx_xyz: np.ndarray) -> np.ndarray:
    """Index (x, y, z) -> world via SimpleITK, independent of the generator's own maths."""
    img = ph.image("labels")
    return np.array(
        [
            img.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p)))
            for p in np.atleast_2d(idx_xyz)
        ]
    )


def _by_name(ph: Phantom) -> dict[str, dict]:
    return {c["name"]: c for c in ph.centroids}


@pytest.fixture(scope="module")
def clean() -> Phantom:
    """Default-size noise-free phantom with implants (exact tissue classes)."""
    return generate(7, {**DEFAULT, **CLEAN, "implants": ["L3", "L4"], "body_scale": 1.0})


@pytest.fixture(scope="module")
def clean_no_metal() -> Phantom:
    return generate(7, {**DEFAULT, **CLEAN, "body_scale": 1.0})


def test_label_ids_are_exactly_the_chosen_levels(clean):
    assert sorted(np.unique(clean.labels).tolist()) == [0, *T1_L5]
    tiny = generate(2, {**TINY, "first_level": "T10", "last_level": "L2"})
    assert sorted(np.unique(tiny.labels).tolist()) == [0, 17, 18, 19, 20, 21]
    assert [c["name"] for c in tiny.centroids] == ["T10", "T11", "T12", "L1", "L2"]


def test_tiny_default_grid_holds_all_levels_with_margins():
    ph = generate(11, {**TINY, "body_scale": 1.1})
    assert sorted(np.unique(ph.labels).tolist()) == [0, *T1_L5]
    # nothing labelled in the first / last two slices: the spine fits with margins
    assert not ph.labels[:2].any() and not ph.labels[-2:].any()
    assert ph.hu.dtype == np.int16 and ph.labels.dtype == np.uint8 and ph.metal.dtype == np.uint8
    assert ph.hu.shape == (64, 40, 48)


def test_centroids_match_label_map_and_anatomy(clean):
    labels = clean.labels
    ids = [c["label"] for c in clean.centroids]
    assert ids == T1_L5
    com = ndimage.center_of_mass(np.ones_like(labels), labels, ids)  # (z, y, x) indices
    world = _world(clean, np.array(com)[:, ::-1])
    got = np.array([[c["x"], c["y"], c["z"]] for c in clean.centroids])
    np.testing.assert_allclose(got, world, atol=1e-6)
    # superior = +z: z increases from L5 up to T1
    assert np.all(np.diff(got[:, 2]) < 0)
    # posterior (+y) of the body centre at the centroid's slice
    body = (clean.hu > -400) & (clean.tissue != Tissue.TABLE)
    for c in clean.centroids:
        k = int(round((c["z"] - clean.origin[2]) / clean.spacing[2]))
        jj = np.nonzero(body[k])[0]
        body_y = clean.origin[1] + clean.spacing[1] * jj.mean()
        assert c["y"] > body_y + 15.0, c["name"]
    # vertebrae grow caudally
    counts = np.bincount(labels.ravel(), minlength=25)
    assert counts[24] > 2 * counts[8]
    assert np.mean(counts[20:25]) > np.mean(counts[8:13])


def test_tissue_hu_values_without_noise(clean):
    hu, t, labels = clean.hu.astype(float), clean.tissue, clean.labels
    cortical = hu[(t == Tissue.CORTICAL) & (labels > 0)]
    cancellous = hu[(t == Tissue.CANCELLOUS) & (labels > 0)]
    assert cortical.size > 500 and cancellous.size > 200
    assert 1000 <= cortical.mean() <= 1500 and cortical.min() >= 1000 and cortical.max() <= 1500
    assert 200 <= cancellous.mean() <= 300
    assert np.all(hu[t == Tissue.DISC] == 90) and (t == Tissue.DISC).sum() > 100
    assert np.all(hu[t == Tissue.CSF] == 15) and (t == Tissue.CSF).sum() > 100
    assert np.all(hu[t == Tissue.FAT] == -100) and np.all(hu[t == Tissue.MUSCLE] == 40)
    assert np.all(hu[t == Tissue.AIR] == -1000)
    # every labelled voxel is vertebral bone (or an implant in it); no unlabelled vertebral bone
    assert np.all(np.isin(t[labels > 0], [Tissue.CORTICAL, Tissue.CANCELLOUS, Tissue.METAL]))
    assert not np.any(np.isin(t[labels == 0], [Tissue.CORTICAL, Tissue.CANCELLOUS]))
    # ribs exist, are bone, and carry no vertebra label
    rib = np.isin(t, [Tissue.RIB_CORTICAL, Tissue.RIB_MARROW])
    assert rib.sum() > 1000 and not labels[rib].any()
    assert 1000 <= hu[t == Tissue.RIB_CORTICAL].mean() <= 1500
    # the table never reaches metal HU
    assert hu[t == Tissue.TABLE].max() < 3000


def test_lungs_only_at_thoracic_levels(clean):
    lung = clean.hu == -850
    assert lung.sum() > 5000
    np.testing.assert_array_equal(lung, clean.tissue == Tissue.LUNG)
    kk = np.nonzero(lung.any(axis=(1, 2)))[0]
    z = clean.origin[2] + clean.spacing[2] * kk
    c = _by_name(clean)
    assert z.min() >= c["T12"]["z"] and z.max() <= c["T1"]["z"] + 15.0
    # both lungs: voxels left and right of the spine
    xs = clean.origin[0] + clean.spacing[0] * np.nonzero(lung.any(axis=(0, 1)))[0]
    assert xs.min() < c["T6"]["x"] - 40 and xs.max() > c["T6"]["x"] + 40
    # a lumbar scan sees lung bases only above its top level (T11 and up lie above L1)
    lumbar = generate(3, {**TINY, **CLEAN, "first_level": "L1", "last_level": "L5"})
    kk = np.nonzero((lumbar.tissue == Tissue.LUNG).any(axis=(1, 2)))[0]
    l1 = _by_name(lumbar)["L1"]["z"]
    assert np.all(lumbar.origin[2] + lumbar.spacing[2] * kk > l1 + 30.0)


def test_metal_exactly_where_the_mask_is(clean, clean_no_metal):
    metal = clean.metal.astype(bool)
    assert metal.sum() > 50
    np.testing.assert_array_equal(clean.hu > 3000, metal)
    # screws on both sides of the spine
    c = _by_name(clean)
    xs = clean.origin[0] + clean.spacing[0] * np.nonzero(metal.any(axis=(0, 1)))[0]
    assert xs.min() < c["L3"]["x"] - 10 and xs.max() > c["L3"]["x"] + 10
    # within the body, between the L2 and L5 levels
    body = ~np.isin(clean.tissue, [Tissue.AIR, Tissue.TABLE]) | metal
    filled = np.stack(
        [
            ndimage.binary_fill_holes(s)
            for s in (clean.tissue != Tissue.AIR) & (clean.tissue != Tissue.TABLE)
        ]
    )
    assert np.all(filled[metal]) and np.all(body[metal])
    zs = clean.origin[2] + clean.spacing[2] * np.nonzero(metal.any(axis=(1, 2)))[0]
    assert zs.min() > c["L5"]["z"] and zs.max() < c["L2"]["z"]
    # labels are anatomy: implants change HU, never the vertebra labels
    np.testing.assert_array_equal(clean.labels, clean_no_metal.labels)
    assert set(np.unique(clean.labels[metal])) <= {0, 22, 23}
    assert not clean_no_metal.metal.any() and clean_no_metal.hu.max() < 3000


def test_metal_with_noise_and_blur_stays_near_the_implants():
    ph = generate(7, {**DEFAULT, "implants": ["L4"], "body_scale": 1.0})
    near = ndimage.binary_dilation(ph.metal.astype(bool), iterations=2)
    assert (ph.hu > 3000).any()
    assert not np.any((ph.hu > 3000) & ~near)


def test_noise_has_the_requested_std(clean_no_metal):
    noisy = generate(7, {**DEFAULT, "noise_hu": 20.0, "blur_mm": 0.0, "body_scale": 1.0})
    np.testing.assert_array_equal(noisy.labels, clean_no_metal.labels)
    diff = noisy.hu.astype(float) - clean_no_metal.hu.astype(float)
    inside = clean_no_metal.tissue == Tissue.MUSCLE
    assert abs(diff[inside].mean()) < 1.0
    assert 18.5 < diff[inside].std() < 21.5


def test_seed_determinism_and_difference():
    a = generate(4, TINY)
    b = generate(4, TINY)
    c = generate(5, TINY)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.centroids == b.centroids
    assert not np.array_equal(a.hu, c.hu)
    assert a.info["kyphosis_mm"] != c.info["kyphosis_mm"]


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_write_case_is_byte_identical_per_seed(tmp_path):
    params = {**TINY, "implants": ["L4"]}
    write_phantom_case(tmp_path / "a", 9, params)
    write_phantom_case(tmp_path / "b", 9, params)
    write_phantom_case(tmp_path / "c", 10, params)
    ha, hb, hc = _tree_hash(tmp_path / "a"), _tree_hash(tmp_path / "b"), _tree_hash(tmp_path / "c")
    assert ha == hb
    assert set(ha) == {
        "labels.nii.gz",
        "metal_truth.nii.gz",
        "centroids.json",
        *(f"dicom/IM{k:05d}.dcm" for k in range(1, 65)),
    }
    assert all(ha[k] != hc[k] for k in ("labels.nii.gz", "centroids.json", "dicom/IM00032.dcm"))
    # nothing temporary is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_dicom_round_trip_case(tmp_path):
    params = {"shape": (48, 40, 64), "spacing_mm": (7.0, 6.5, 7.5), "implants": ["L3"]}
    write_phantom_case(tmp_path / "case", 12, params)
    ph = generate(12, params)
    img = _read_series(tmp_path / "case" / "dicom")
    np.testing.assert_allclose(img.GetSpacing(), ph.spacing, atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), ph.origin, atol=1e-6)
    np.testing.assert_allclose(img.GetDirection(), ph.direction, atol=1e-9)
    arr = sitk.GetArrayFromImage(img)
    assert arr.shape == ph.hu.shape
    np.testing.assert_array_equal(arr.astype(np.int32), ph.hu.astype(np.int32))

    files = sorted((tmp_path / "case" / "dicom").glob("*.dcm"))
    normal = np.array(ph.direction).reshape(3, 3)[:, 2]
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        expected = np.array(ph.origin) + k * ph.spacing[2] * normal
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected, atol=1e-6)
        assert ds.InstanceNumber == k + 1
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
    assert [float(v) for v in ds.PixelSpacing] == [6.5, 7.0]  # row (y), column (x)
    assert (ds.Rows, ds.Columns) == (40, 48)
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    np.testing.assert_array_equal(ds.pixel_array.astype(int) - 1024, ph.hu[0])
    assert ds.StudyDate == "20260101" and ds.KVP == 120 and ds.Manufacturer == "ctseg phantom"
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in files}) == len(files)

    labels = sitk.ReadImage(str(tmp_path / "case" / "labels.nii.gz"))
    assert labels.GetSize() == img.GetSize() and labels.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(labels.GetSpacing(), img.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(labels.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetDirection(), img.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), ph.labels)
    metal = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case" / "metal_truth.nii.gz")))
    np.testing.assert_array_equal(metal, ph.metal)
    cj = json.loads((tmp_path / "case" / "centroids.json").read_text())
    assert [r["label"] for r in cj] == T1_L5
    for r, c in zip(cj, ph.centroids, strict=True):
        assert r["name"] == c["name"]
        np.testing.assert_allclose([r["x"], r["y"], r["z"]], [c["x"], c["y"], c["z"]], atol=1e-3)


def _rotation(ax_deg: float, az_deg: float) -> tuple[float, ...]:
    a, b = np.radians(ax_deg), np.radians(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return tuple((rz @ rx).ravel())


def test_oblique_grid_round_trips_and_keeps_anatomy(tmp_path):
    direction = _rotation(12.0, 8.0)
    params = {**DEFAULT, **CLEAN, "body_scale": 1.0, "direction": direction}
    ob = generate(7, params)
    straight = generate(7, {**DEFAULT, **CLEAN, "body_scale": 1.0})
    assert sorted(np.unique(ob.labels).tolist()) == [0, *T1_L5]
    a = np.array([[c["x"], c["y"], c["z"]] for c in ob.centroids])
    b = np.array([[c["x"], c["y"], c["z"]] for c in straight.centroids])
    assert np.abs(a - b).max() < 3.0  # same anatomy in world mm, sampled differently
    # world positions of labelled voxels agree with the label map's own geometry
    files = write_dicom_series(ob.hu, ob.spacing, ob.origin, ob.direction, tmp_path / "ob", seed=1)
    assert len(files) == ob.hu.shape[0]
    img = _read_series(tmp_path / "ob")
    np.testing.assert_allclose(img.GetDirection(), direction, atol=1e-9)
    np.testing.assert_allclose(img.GetOrigin(), ob.origin, atol=1e-6)
    np.testing.assert_allclose(img.GetSpacing(), ob.spacing, atol=1e-6)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(img).astype(np.int32), ob.hu.astype(np.int32)
    )


def test_curvature_parameters_move_centroids_as_asked():
    base = {
        **DEFAULT,
        **CLEAN,
        "body_scale": 1.0,
        "kyphosis_mm": 15.0,
        "lordosis_mm": 10.0,
        "scoliosis_mm": 0.0,
    }
    ref = generate(3, base)
    sco = generate(3, {**base, "scoliosis_mm": 20.0})
    kyp = generate(3, {**base, "kyphosis_mm": 30.0})
    lor = generate(3, {**base, "lordosis_mm": 25.0})

    def xyz(ph):
        return np.array([[c["x"], c["y"], c["z"]] for c in ph.centroids])

    r = xyz(ref)
    ds = xyz(sco) - r
    assert np.all(ds[1:-1, 0] > 0) and 17.0 < ds[:, 0].max() < 21.5  # towards the left
    assert np.abs(ds[:, 1]).max() < 2.5
    dk = xyz(kyp) - r
    thor = slice(0, 12)
    assert 13.0 < dk[thor, 1].max() < 16.5  # 15 mm more posterior at the apex
    assert np.abs(dk[12:, 1]).max() < 2.0 and np.abs(dk[:, 0]).max() < 1.5
    dl = xyz(lor) - r
    assert -16.5 < dl[12:, 1].min() < -13.0  # 15 mm more anterior in the lumbar spine
    assert np.abs(dl[thor, 1]).max() < 2.0


def test_params_from_dict_validates():
    p = PhantomParams.from_dict(
        {"shape": [48, 40, 64], "spacing_mm": [7, 7, 7], "implants": ["L3"]}
    )
    assert p.shape == (48, 40, 64) and p.spacing_mm == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError, match="colour.*size|size.*colour"):
        PhantomParams.from_dict({"colour": 1, "size": 2})
    with pytest.raises(ValueError, match="outside"):
        PhantomParams(implants=["T3"], first_level="L1")
    with pytest.raises(ValueError):
        PhantomParams(first_level="L5", last_level="T1")
    with pytest.raises(ValueError, match="rotation"):
        PhantomParams(direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))
    with pytest.raises(ValueError, match="too small"):
        generate(1, {"shape": (8, 8, 8), "spacing_mm": (1.0, 1.0, 1.0)})


def test_dicom_writer_extras_and_signed_storage(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-2000, 2000, size=(5, 6, 7)).astype(np.int16)  # below -1024: signed storage
    files = write_dicom_series(
        hu,
        (0.5, 0.75, 2.0),
        (10.0, -20.0, 30.0),
        None,
        tmp_path / "s",
        seed=3,
        extra={"GantryDetectorTilt": 5.0, "SliceThickness": lambda k: 2.0 + k, "PatientSex": None},
        per_slice=lambda k, ds: setattr(ds, "SeriesNumber", 7 + k) or ds,
    )
    assert [f.name for f in files] == [f"IM{k:05d}.dcm" for k in range(1, 6)]
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        assert ds.PixelRepresentation == 1 and float(ds.GantryDetectorTilt) == 5.0
        assert float(ds.SliceThickness) == 2.0 + k and ds.SeriesNumber == 7 + k
        assert "PatientSex" not in ds
        np.testing.assert_array_equal(ds.pixel_array.astype(int) - 1024, hu[k])
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], [10, -20, 30 + 2 * k]
        )
    with pytest.raises(ValueError, match="16-bit"):
        write_dicom_series(
            np.full((2, 3, 3), 70000, dtype=np.int32),
            (1, 1, 1),
            (0, 0, 0),
            None,
            tmp_path / "bad",
            seed=1,
        )
    assert not (tmp_path / "bad").exists()


def test_cli_writes_a_case(tmp_path, capsys):
    out = tmp_path / "p01"
    rc = cli_main(
        [
            "phantom",
            str(out),
            "--seed",
            "3",
            "--shape",
            "48",
            "40",
            "64",
            "--spacing",
            "7",
            "7",
            "7",
            "--implants",
            "L3",
            "L4",
            "--first",
            "T6",
            "--last",
            "L5",
        ]
    )
    assert rc == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    assert sorted(np.unique(labels).tolist()) == [0, *range(VERSE_IDS["T6"], 25)]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out / "metal_truth.nii.gz"))).sum() > 0
    assert len(list((out / "dicom").glob("IM*.dcm"))) == 64


def test_blur_is_a_mass_preserving_psf(clean_no_metal):
    blurred = generate(7, {**DEFAULT, "noise_hu": 0.0, "blur_mm": 3.0, "body_scale": 1.0})
    a, b = clean_no_metal.hu.astype(float), blurred.hu.astype(float)
    assert abs(a.mean() - b.mean()) < 0.5  # a normalised kernel moves HU, never adds it
    assert (
        b[clean_no_metal.tissue == Tissue.CORTICAL].mean()
        < a[clean_no_metal.tissue == Tissue.CORTICAL].mean() - 100
    )
    # far (> 3 sigma) from any edge, uniform tissue keeps its value
    deep = ndimage.binary_erosion(
        clean_no_metal.tissue == Tissue.MUSCLE, structure=np.ones((3, 3, 3)), iterations=3
    )
    assert deep.sum() > 1000 and np.abs(b[deep] - 40).max() <= 1
