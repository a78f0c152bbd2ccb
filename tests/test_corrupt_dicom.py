"""Corrupt DICOM geometry / values: each is an InputError naming the file, never NaN output."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from dicom_factory import write_series

from ctseg.core.errors import InputError
from ctseg.ingest.dicomio import read_dicom_series
from ctseg.ingest.stats import summarize_path


def _hu(shape=(3, 6, 7), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 2000, size=shape).astype(np.float64)


def _corrupt(path, **tags):
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        if key == "PixelData8":
            stored = ds.pixel_array.astype(np.uint8)
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit = 7
            ds.PixelRepresentation = 0
            ds.PixelData = stored.tobytes()
        else:
            setattr(ds, key, value)
    ds.save_as(path)


def _expect(tmp_path, files, k, match, case="bad"):
    with pytest.raises(InputError, match=match) as e:
        read_dicom_series(tmp_path, case=case, progress=False)
    assert e.value.case == case
    assert e.value.path is not None and e.value.path.name == files[k].name
    assert files[k].name in str(e.value)
    return e.value


def test_all_zero_orientation(tmp_path):
    files = write_series(tmp_path, _hu())
    for f in files:
        _corrupt(f, ImageOrientationPatient=[0, 0, 0, 0, 0, 0])
    _expect(tmp_path, files, 0, "ImageOrientationPatient")


def test_non_orthogonal_orientation(tmp_path):
    files = write_series(tmp_path, _hu())
    for f in files:
        _corrupt(f, ImageOrientationPatient=[1, 0, 0, 1, 0, 0])
    _expect(tmp_path, files, 0, "not orthogonal")


def test_nan_rescale_slope_on_one_slice(tmp_path):
    files = write_series(tmp_path, _hu())
    _corrupt(files[1], RescaleSlope="NaN")
    _expect(tmp_path, files, 1, "RescaleSlope")


def test_garbage_rescale_intercept(tmp_path):
    files = write_series(tmp_path, _hu())
    data = files[2].read_bytes()
    assert data.count(b"-1024") == 1  # the intercept's DS text
    files[2].write_bytes(data.replace(b"-1024", b"abc  "))
    _expect(tmp_path, files, 2, "RescaleIntercept")


def test_huge_rescale_slope(tmp_path):
    files = write_series(tmp_path, _hu())
    _corrupt(files[0], RescaleSlope=1e38)
    _expect(tmp_path, files, 0, "RescaleSlope")


def test_rescale_overflow_after_decode(tmp_path):
    """Slope within the sanity bound but values beyond MAX_ABS_HU: caught on the decoded plane."""
    hu = np.full((3, 4, 4), 30000.0)
    files = write_series(tmp_path, hu, intercepts=[0.0] * 3)
    _corrupt(files[1], RescaleSlope=100.0)
    _expect(tmp_path, files, 1, "rescaled values")


def test_8_bit_slice_in_16_bit_series(tmp_path):
    files = write_series(tmp_path, np.clip(_hu(), -1000, -800))
    _corrupt(files[1], PixelData8=True)
    err = _expect(tmp_path, files, 1, "pixel format differs")
    assert "BitsAllocated 8 here, 16 in" in str(err)


@pytest.mark.parametrize("spacing", [[0, 0.7], [0.7, -1], ["NaN", 1]])
def test_bad_pixel_spacing(tmp_path, spacing):
    files = write_series(tmp_path, _hu())
    _corrupt(files[2], PixelSpacing=spacing)
    _expect(tmp_path, files, 2, "PixelSpacing")


def test_bad_position(tmp_path):
    files = write_series(tmp_path, _hu())
    _corrupt(files[1], ImagePositionPatient=[0, "NaN", 1])
    _expect(tmp_path, files, 1, "ImagePositionPatient")


def test_missing_rescale_falls_back_to_identity(tmp_path):
    """The standard's fallback (no RescaleSlope/Intercept = stored values are the HU)."""
    hu = _hu()
    files = write_series(tmp_path, hu, intercepts=[0.0] * 3)
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(f)
    img, _ = read_dicom_series(tmp_path, progress=False)
    import SimpleITK as sitk

    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), hu)


def test_stats_json_of_valid_series_is_strict(tmp_path):
    write_series(tmp_path / "d", _hu())
    summary = summarize_path(tmp_path / "d", case="ok")
    text = json.dumps(summary, allow_nan=False)  # raises on NaN / Infinity
    assert "NaN" not in text
