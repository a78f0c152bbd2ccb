"""build_volume / read_image / read_case_list: geometry round trips, label checks, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import write_series

from ctseg.cli import main
from ctseg.core.errors import InputError
from ctseg.core.labels import TOTALSEG_V2_TO_VERSE
from ctseg.ingest.volume import build_volume, centroids_from_labels, read_case_list, read_image


def _outs(tmp_path: Path):
    d = tmp_path / "vol"
    return d / "ct.nii.gz", d / "labels.nii.gz", d / "centroids.json"


def _grid_image(
    arr, spacing=(0.8, 0.7, 2.0), origin=(-10.0, -20.0, 30.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)
):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def _raw_dicom_case(tmp_path: Path, shape=(4, 6, 7)) -> tuple[Path, np.ndarray]:
    raw = tmp_path / "raw" / "c"
    hu = np.random.default_rng(0).integers(-1000, 1500, shape).astype(float)
    write_series(raw / "dicom", hu)  # spacing (0.8, 0.7, 2), origin (-10, -20, 30)
    return raw, hu


def test_dicom_case_with_labels_and_map(tmp_path):
    raw, hu = _raw_dicom_case(tmp_path)
    lab = np.zeros(hu.shape, np.uint8)
    lab[1:3, 2:4, 2:5] = 27  # TotalSegmentator v2 L5 -> VerSe 24
    lab[0, 0, 0] = 200  # not in the map -> 0
    sitk.WriteImage(_grid_image(lab), str(raw / "labels.nii.gz"))
    ct_out, lab_out, cen_out = _outs(tmp_path)
    build_volume(raw, ct_out, lab_out, cen_out, case="c", label_map=TOTALSEG_V2_TO_VERSE, ingest={})
    ct = sitk.ReadImage(str(ct_out))
    assert ct.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(sitk.GetArrayFromImage(ct), hu)
    assert ct.GetSpacing() == pytest.approx((0.8, 0.7, 2.0)) and ct.GetOrigin() == pytest.approx(
        (-10, -20, 30)
    )
    out = sitk.ReadImage(str(lab_out))
    assert out.GetPixelID() == sitk.sitkUInt8
    arr = sitk.GetArrayFromImage(out)
    assert set(np.unique(arr)) == {0, 24} and np.count_nonzero(arr) == 2 * 2 * 3
    cents = json.loads(cen_out.read_text())
    # centre of mass: x index 3, y index 2.5, z index 1.5
    assert cents == [
        {
            "label": 24,
            "name": "L5",
            "x": pytest.approx(-10 + 3 * 0.8),
            "y": pytest.approx(-20 + 2.5 * 0.7),
            "z": pytest.approx(30 + 1.5 * 2),
        }
    ]


def test_unannotated_case_gets_zero_labels_and_no_centroids(tmp_path):
    raw, hu = _raw_dicom_case(tmp_path)
    ct_out, lab_out, cen_out = _outs(tmp_path)
    build_volume(raw, ct_out, lab_out, cen_out, case="c", label_map=None, ingest={})
    lab = sitk.ReadImage(str(lab_out))
    assert lab.GetSize() == (7, 6, 4) and not sitk.GetArrayFromImage(lab).any()
    assert json.loads(cen_out.read_text()) == []


def test_raw_centroids_are_copied_sorted(tmp_path):
    raw, _ = _raw_dicom_case(tmp_path)
    ct_out, lab_out, cen_out = _outs(tmp_path)
    build_volume(raw, ct_out, lab_out, cen_out, case="c", label_map=None, ingest={})
    ct = sitk.ReadImage(str(ct_out))
    p1 = ct.TransformContinuousIndexToPhysicalPoint((1.0, 2.0, 1.0))
    p2 = ct.TransformContinuousIndexToPhysicalPoint((3.0, 3.0, 2.0))
    (raw / "centroids.json").write_text(
        json.dumps(
            [
                {"label": 21, "x": p1[0], "y": p1[1], "z": p1[2]},
                {"label": 20, "name": "L1", "x": p2[0], "y": p2[1], "z": p2[2]},
            ]
        )
    )
    build_volume(raw, ct_out, lab_out, cen_out, case="c", label_map=None, ingest={})
    got = json.loads(cen_out.read_text())
    assert [(c["label"], c["name"]) for c in got] == [(20, "L1"), (21, "L2")]
    np.testing.assert_allclose([got[0][k] for k in "xyz"], p2, atol=1e-9)
    np.testing.assert_allclose([got[1][k] for k in "xyz"], p1, atol=1e-9)
    # a centroid outside the scan is an error naming the file
    (raw / "centroids.json").write_text(json.dumps([{"label": 20, "x": 1e4, "y": 0, "z": 0}]))
    with pytest.raises(InputError, match="lies outside the image") as e:
        build_volume(raw, ct_out, lab_out, cen_out, case="c", label_map=None, ingest={})
    assert "centroids.json" in str(e.value)


def test_labels_on_other_grid_error_leaves_nothing_then_resample(tmp_path):
    raw, hu = _raw_dicom_case(tmp_path)
    lab = np.zeros(hu.shape, np.uint8)
    lab[2, 3, 4] = 5
    sitk.WriteImage(_grid_image(lab, origin=(-10.0, -20.0, 32.0)), str(raw / "labels.nii.gz"))
    ct_out, lab_out, cen_out = _outs(tmp_path)
    with pytest.raises(InputError, match="not on the CT grid") as e:
        build_volume(raw, ct_out, lab_out, cen_out, case="c", label_map=None, ingest={})
    assert e.value.case == "c" and e.value.path.name == "labels.nii.gz"
    assert not ct_out.exists() and not lab_out.exists() and not cen_out.exists()
    build_volume(
        raw, ct_out, lab_out, cen_out, case="c", label_map=None, ingest={"resample_labels": True}
    )
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(lab_out)))
    # labels shifted +2 mm in z = one slice: voxel z=2 of the labels lands on CT slice 3
    assert np.argwhere(arr).tolist() == [[3, 3, 4]]


def test_flipped_axes_labels_are_reindexed_exactly(tmp_path):
    raw, hu = _raw_dicom_case(tmp_path)
    lab = np.zeros(hu.shape, np.uint8)
    lab[1, 0, 2] = 9
    flipped = lab[:, ::-1, :].copy()  # y flipped: origin moves to the last row, direction y = -1
    img = _grid_image(
        flipped, origin=(-10.0, -20.0 + 5 * 0.7, 30.0), direction=(1, 0, 0, 0, -1, 0, 0, 0, 1)
    )
    sitk.WriteImage(img, str(raw / "labels.nrrd"))
    ct_out, lab_out, cen_out = _outs(tmp_path)
    build_volume(raw, ct_out, lab_out, cen_out, case="c", label_map=None, ingest={})
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(lab_out))), lab)


def test_bad_dicom_leaves_nothing(tmp_path):
    raw = tmp_path / "raw" / "c"
    files = write_series(raw / "dicom", np.zeros((3, 4, 4)), modality="MR")
    ct_out, lab_out, cen_out = _outs(tmp_path)
    with pytest.raises(InputError) as e:
        build_volume(raw, ct_out, lab_out, cen_out, case="c", label_map=None, ingest={})
    assert e.value.case == "c" and e.value.path.name == files[0].name
    assert not ct_out.parent.exists() or list(ct_out.parent.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_volume_source_geometry_honoured(tmp_path, suffix):
    arr = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 30
    c, s = np.cos(0.3), np.sin(0.3)
    img = _grid_image(
        arr,
        spacing=(1.1, 1.2, 2.5),
        origin=(3.0, -4.0, 5.0),
        direction=(c, -s, 0, s, c, 0, 0, 0, 1),
    )
    raw = tmp_path / "raw"
    raw.mkdir()
    sitk.WriteImage(img, str(raw / f"image{suffix}"))
    ref = sitk.ReadImage(str(raw / f"image{suffix}"))
    got, meta = read_image(raw / f"image{suffix}", case="v")
    assert meta["source_kind"] == ("nifti" if suffix == ".nii.gz" else "nrrd")
    ct_out, lab_out, cen_out = _outs(tmp_path)
    build_volume(raw, ct_out, lab_out, cen_out, case="v", label_map=None, ingest={})
    out = sitk.ReadImage(str(ct_out))
    for a in (got, out):
        assert a.GetOrigin() == pytest.approx(ref.GetOrigin(), abs=1e-4)
        assert a.GetDirection() == pytest.approx(ref.GetDirection(), abs=1e-5)
        assert a.GetSpacing() == pytest.approx(ref.GetSpacing())
        assert np.array_equal(sitk.GetArrayFromImage(a), arr)


def test_real_series_round_trip(real_series_dir, real_labels_path, tmp_path):
    raw = tmp_path / "raw" / "real"
    raw.mkdir(parents=True)
    (raw / "dicom").symlink_to(real_series_dir, target_is_directory=True)
    (raw / "labels.nii.gz").symlink_to(real_labels_path)
    ct_out, lab_out, cen_out = _outs(tmp_path)
    build_volume(
        raw, ct_out, lab_out, cen_out, case="real", label_map=TOTALSEG_V2_TO_VERSE, ingest={}
    )
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(real_series_dir)))
    ref = r.Execute()
    ct = sitk.ReadImage(str(ct_out))
    assert ct.GetSpacing() == pytest.approx(ref.GetSpacing())
    assert ct.GetOrigin() == pytest.approx(ref.GetOrigin())
    assert ct.GetDirection() == pytest.approx(ref.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(ref))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(lab_out)))
    src = sitk.GetArrayFromImage(sitk.ReadImage(str(real_labels_path)))[
        :, ::-1, :
    ]  # y flipped on disk
    assert set(np.unique(lab)) == {0, 18, 19}  # T11, T12
    assert np.array_equal(lab == 19, src == 32) and np.array_equal(lab == 18, src == 33)
    names = [c["name"] for c in json.loads(cen_out.read_text())]
    assert names == ["T11", "T12"]


def test_centroids_match_numpy(tmp_path):
    arr = np.zeros((5, 6, 7), np.uint8)
    arr[1, 2, 3] = 20
    arr[3, 4, 5] = 20
    img = _grid_image(arr)
    (c,) = centroids_from_labels(img)
    assert (c["x"], c["y"], c["z"]) == pytest.approx((-10 + 4 * 0.8, -20 + 3 * 0.7, 30 + 2 * 2.0))


def test_read_case_list(tmp_path):
    lst = tmp_path / "cases.txt"
    lst.write_text("imgs/a.nrrd,labs/a_seg.nrrd\n\n# comment\n/abs/b.nii.gz , /abs/b_lab.nii.gz\n")
    rows = read_case_list(lst)
    assert rows == [
        {
            "case": "a",
            "source": "nrrd",
            "location": str(tmp_path / "imgs/a.nrrd"),
            "sha256": "",
            "labels": str(tmp_path / "labs/a_seg.nrrd"),
            "centroids": "",
            "label_map": "",
            "split": "train",
        },
        {
            "case": "b",
            "source": "nifti",
            "location": "/abs/b.nii.gz",
            "sha256": "",
            "labels": "/abs/b_lab.nii.gz",
            "centroids": "",
            "label_map": "",
            "split": "train",
        },
    ]
    lst.write_text("a.nrrd,x.nrrd\nsub/a.nrrd,y.nrrd\n")
    with pytest.raises(InputError, match="repeats line 1"):
        read_case_list(lst)
    lst.write_text("a.nrrd\n")
    with pytest.raises(InputError, match="line 1"):
        read_case_list(lst)


def test_cli_volume(tmp_path):
    _, hu = _raw_dicom_case(tmp_path)
    out = tmp_path / "o" / "ct.nii.gz"
    assert main(["volume", str(tmp_path / "raw" / "c" / "dicom"), "--out", str(out)]) == 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), hu)
    assert (tmp_path / "o" / "labels.nii.gz").exists() and (
        tmp_path / "o" / "centroids.json"
    ).exists()


def test_nan_nifti_build_leaves_nothing(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    arr = np.zeros((3, 4, 5), np.float32)
    arr[2, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(raw / "image.nii.gz"))
    ct_out, lab_out, cen_out = _outs(tmp_path)
    with pytest.raises(InputError, match="NaN") as e:
        build_volume(raw, ct_out, lab_out, cen_out, case="n", label_map=None, ingest={})
    assert e.value.case == "n" and e.value.path.name == "image.nii.gz"
    assert not ct_out.exists() and not lab_out.exists() and not cen_out.exists()


def test_single_dicom_file_path(tmp_path):
    files = write_series(tmp_path / "d", np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(float))
    img, meta = read_image(files[1], case="one")
    assert img.GetSize() == (4, 3, 1) and meta["n_files"] == 1
    assert np.array_equal(sitk.GetArrayFromImage(img)[0], np.arange(12, 24).reshape(3, 4))
