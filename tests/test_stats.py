"""Summary statistics against independent computations (pydicom arrays, SimpleITK geometry)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import PATIENT_ID, PATIENT_NAME, read_stored_hu, write_series
from pydicom.data import get_testdata_file

from ctseg.cli import main
from ctseg.core.errors import InputError
from ctseg.ingest.stats import (
    STAT_KEYS,
    summarize_path,
    summarize_raw,
    summary_columns,
    write_summary_table,
)


def test_synthetic_series_values(tmp_path):
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 1500, (4, 6, 5)).astype(float)
    files = write_series(
        tmp_path / "raw" / "dicom", hu, spacing=(0.5, 0.75, 2.0), origin=(10, 20, 30), thickness=3.0
    )
    s = summarize_raw(tmp_path / "raw", case="syn", ingest={})
    ref = np.stack([read_stored_hu(f) for f in files])
    assert list(s) == list(STAT_KEYS)
    assert s["hu_min"] == ref.min() and s["hu_max"] == ref.max()
    assert s["hu_mean"] == pytest.approx(ref.mean()) and s["hu_std"] == pytest.approx(ref.std())
    assert (s["n_slices"], s["rows"], s["cols"]) == (4, 6, 5)
    assert s["spacing_mm"] == pytest.approx([0.5, 0.75, 2.0])
    assert s["slice_thickness_mm"] == 3.0 and s["slice_spacing_mm"] == pytest.approx(2.0)
    # centre of the voxel-centre lattice: origin + (size-1)/2 * spacing along identity axes
    assert s["center_mm"] == pytest.approx([10 + 2 * 0.5, 20 + 2.5 * 0.75, 30 + 1.5 * 2.0])
    assert s["bbox_mm"][0] == pytest.approx([10 - 0.25, 20 - 0.375, 30 - 1.0])
    assert s["bbox_mm"][1] == pytest.approx([10 + 4.5 * 0.5, 20 + 5.5 * 0.75, 30 + 3.5 * 2.0])
    assert s["orientation"] == "LPS"
    assert (s["modality"], s["manufacturer"], s["model"], s["kvp"], s["kernel"]) == (
        "CT",
        "ACME",
        "TestScan 1",
        120.0,
        "B30f",
    )
    assert any("thickness" in w for w in s["warnings"])
    text = json.dumps(s)
    assert PATIENT_NAME not in text and PATIENT_ID not in text and "Secret" not in text


def test_ct_small(tmp_path):
    path = get_testdata_file("CT_small.dcm")
    (tmp_path / "d").mkdir()
    shutil.copy(path, tmp_path / "d" / "a.dcm")
    s = summarize_path(tmp_path / "d", case="small")
    ds = pydicom.dcmread(path)
    ref = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert (s["hu_min"], s["hu_max"]) == (ref.min(), ref.max())
    assert s["hu_mean"] == pytest.approx(ref.mean())
    assert s["rows"] == ds.Rows and s["cols"] == ds.Columns and s["n_slices"] == 1
    assert s["center_mm"][:2] == pytest.approx(
        [
            float(ds.ImagePositionPatient[0]) + 63.5 * 0.661468,
            float(ds.ImagePositionPatient[1]) + 63.5 * 0.661468,
        ]
    )
    text = json.dumps(s)
    assert str(ds.PatientName) not in text and str(ds.PatientID) not in text


def test_nifti_center_is_what_simpleitk_reports(tmp_path):
    arr = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 2.0, 3.0))
    img.SetOrigin((5.0, -7.0, 11.0))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS-style axes
    p = tmp_path / "v.nii.gz"
    sitk.WriteImage(img, str(p))
    s = summarize_path(p, case="v")
    back = sitk.ReadImage(str(p))
    assert s["center_mm"] == pytest.approx(
        list(back.TransformContinuousIndexToPhysicalPoint([2.0, 1.5, 1.0]))
    )
    assert s["center_mm"] == pytest.approx([5 - 2.0, -7 - 3.0, 11 + 3.0])
    assert s["orientation"] == "RAS"
    assert s["source_kind"] == "nifti" and s["hu_max"] == 59 and s["hu_mean"] == pytest.approx(29.5)


def test_nrrd_space_directions(tmp_path):
    """A hand-written NRRD header: SimpleITK's geometry (LPS) drives the centre."""
    p = tmp_path / "v.nrrd"
    data = np.arange(2 * 3 * 4, dtype=np.int16)
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 3 2\n"
        "space directions: (0,2,0) (1.5,0,0) (0,0,3)\nendian: little\nencoding: raw\n"
        "space origin: (1,2,3)\n\n"
    )
    p.write_bytes(header.encode() + data.astype("<i2").tobytes())
    s = summarize_path(p, case="n")
    # centre index (1.5, 1, 0.5): x axis -> (0,2,0)*1.5, y axis -> (1.5,0,0)*1, z -> (0,0,3)*0.5
    assert s["center_mm"] == pytest.approx([1 + 1.5, 2 + 3.0, 3 + 1.5])
    assert s["spacing_mm"] == pytest.approx([2.0, 1.5, 3.0])
    assert s["source_kind"] == "nrrd" and s["hu_max"] == 23


def test_real_series(real_series_dir):
    s = summarize_path(real_series_dir, case="real")
    files = sorted(real_series_dir.iterdir())
    ref = np.stack([read_stored_hu(f) for f in files])
    assert (s["hu_min"], s["hu_max"]) == (ref.min(), ref.max())
    assert s["hu_mean"] == pytest.approx(ref.mean()) and s["hu_std"] == pytest.approx(ref.std())
    assert s["manufacturer"] == "SIEMENS" and s["kvp"] == 120.0
    assert s["slice_thickness_mm"] == 3.0 and s["slice_spacing_mm"] == pytest.approx(2.0)
    assert s["spacing_mm"] == pytest.approx([0.9765625, 0.9765625, 2.0])
    # z centre: midway between the lowest (-804.5) and highest (-766.5) slice positions
    assert s["center_mm"] == pytest.approx(
        [-249.51171875 + 255.5 * 0.9765625, -437.51171875 + 255.5 * 0.9765625, -785.5]
    )
    ds = pydicom.dcmread(files[0])
    text = json.dumps(s)
    for ident in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
        if ident:
            assert ident not in text


def test_summary_table_and_cli(tmp_path):
    write_series(tmp_path / "a" / "dicom", np.zeros((2, 3, 3)))
    arr = np.zeros((2, 3, 3), np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "b.nii.gz"))
    ja, jb = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["stats", str(tmp_path / "a" / "dicom"), "--json", str(ja), "--case", "zz"]) == 0
    assert main(["stats", str(tmp_path / "b.nii.gz"), "--json", str(jb)]) == 0
    assert json.loads(jb.read_text())["case"] == "b"
    out = tmp_path / "summary.tsv"
    write_summary_table([jb, ja], out)
    with open(out) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert list(rows[0]) == summary_columns()
    assert [r["case"] for r in rows] == ["b", "zz"]
    assert rows[1]["spacing_z_mm"] == "2.0" and rows[0]["kvp"] == ""


def test_cli_prints_json(tmp_path, capsys):
    sitk.WriteImage(
        sitk.GetImageFromArray(np.full((2, 2, 2), 7, np.int16)), str(tmp_path / "c.nii.gz")
    )
    assert main(["stats", str(tmp_path / "c.nii.gz")]) == 0
    assert json.loads(capsys.readouterr().out)["hu_mean"] == 7.0


def test_nan_nifti_is_input_error(tmp_path):
    arr = np.zeros((2, 2, 2), np.float32)
    arr[1, 0, 1] = np.nan
    p = tmp_path / "bad.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
    with pytest.raises(InputError, match="NaN") as e:
        summarize_path(p, case="nan")
    assert e.value.case == "nan" and Path(e.value.path).name == "bad.nii.gz"
