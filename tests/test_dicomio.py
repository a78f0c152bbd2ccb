"""DICOM ingestion: ordering, geometry, rescale, codecs, multi-frame, and every bad-input error."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import read_stored_hu, write_enhanced, write_series
from pydicom.data import get_testdata_file

from ctseg.core.errors import InputError
from ctseg.ingest.dicomio import read_dicom_series


def _hu(shape=(5, 6, 7), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 2000, size=shape).astype(np.float64)


def _arr(img):
    return sitk.GetArrayFromImage(img).astype(np.float64)


def test_order_by_position_not_instance_number(tmp_path):
    hu = _hu()
    write_series(tmp_path, hu, spacing=(0.8, 0.7, 2.5), origin=(-10, -20, 30))
    img, meta = read_dicom_series(tmp_path, case="c1", progress=False)
    assert np.array_equal(_arr(img), hu)
    assert img.GetSpacing() == pytest.approx((0.8, 0.7, 2.5))
    assert img.GetOrigin() == pytest.approx((-10, -20, 30))
    assert img.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert img.GetPixelID() == sitk.sitkInt16
    assert meta["n_slices"] == 5 and meta["rows"] == 6 and meta["cols"] == 7
    assert meta["warnings"] == []


def test_files_shuffled_and_reversed_normal(tmp_path):
    """Positions decreasing in file order, and an IOP whose normal is -z (feet-first style)."""
    hu = _hu()
    iop = (1, 0, 0, 0, -1, 0)  # normal = (0, 0, -1)
    write_series(tmp_path, hu, iop=iop, origin=(0, 0, 0), spacing=(1, 1, 3))
    img, _ = read_dicom_series(tmp_path, progress=False)
    # slice k is at z = -3k, i.e. offset along the normal +3k: file order is normal order
    assert np.array_equal(_arr(img), hu)
    assert img.GetDirection() == pytest.approx((1, 0, 0, 0, -1, 0, 0, 0, -1))
    assert img.GetOrigin() == pytest.approx((0, 0, 0))
    # reference: SimpleITK/GDCM agrees on geometry and voxels
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(tmp_path)))
    ref = r.Execute()
    assert ref.GetOrigin() == pytest.approx(img.GetOrigin())
    assert ref.GetDirection() == pytest.approx(img.GetDirection())
    assert np.array_equal(_arr(ref), _arr(img))


def test_oblique_orientation_is_honoured(tmp_path):
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    iop = (c, s, 0, 0, 0, -1)  # coronal-ish oblique
    hu = _hu((4, 5, 6))
    write_series(tmp_path, hu, iop=iop, origin=(5, 6, 7), spacing=(1.0, 1.5, 2.0))
    img, _ = read_dicom_series(tmp_path, progress=False)
    normal = np.cross([c, s, 0], [0, 0, -1])
    d = np.reshape(img.GetDirection(), (3, 3))
    assert d[:, 2] == pytest.approx(normal)
    # voxel (x=2, y=3, z=1) lies at origin + 2*1.0*row + 3*1.5*col + 1*2.0*normal
    expect = (
        np.array([5, 6, 7]) + 2 * np.array([c, s, 0]) + 4.5 * np.array([0, 0, -1]) + 2.0 * normal
    )
    assert img.TransformIndexToPhysicalPoint((2, 3, 1)) == pytest.approx(expect)
    assert np.array_equal(_arr(img), hu)


def test_per_slice_rescale(tmp_path):
    hu = _hu((4, 5, 6)) * 1.0
    slopes = [1.0, 2.0, 0.5, 1.0]
    intercepts = [-1024.0, -1000.0, -1024.0, 0.0]
    hu = np.stack(
        [
            np.round((hu[k] - intercepts[k]) / slopes[k]) * slopes[k] + intercepts[k]
            for k in range(4)
        ]
    )
    files = write_series(tmp_path, hu, slopes=slopes, intercepts=intercepts)
    img, _ = read_dicom_series(tmp_path, progress=False)
    ref = np.stack([read_stored_hu(f) for f in files])
    assert np.allclose(_arr(img), ref)
    assert img.GetPixelID() == sitk.sitkFloat32  # 0.5 slope: not exactly int16


@pytest.mark.parametrize("signed", [False, True])
def test_bits_stored_below_bits_allocated(tmp_path, signed):
    """12-bit pixels in 16-bit words: junk above bit 11 is masked (unsigned) or the 12-bit two's
    complement is sign-extended (signed), exactly as pydicom's decoder does."""
    files = write_series(tmp_path, np.zeros((2, 4, 5)))
    rng = np.random.default_rng(3)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
        words = rng.integers(0, 1 << 16, (4, 5), dtype=np.uint32).astype(np.uint16)
        ds.PixelData = words.astype(np.int16 if signed else np.uint16).tobytes()
        ds.save_as(f)
    img, _ = read_dicom_series(tmp_path, progress=False)
    ref = np.stack([read_stored_hu(f) for f in files])
    assert np.array_equal(_arr(img), ref)
    assert ref.min() >= -1024 - (2048 if signed else 0) and ref.max() <= -1024 + 4095


@pytest.mark.parametrize("codec", ["rle", "j2k"])
@pytest.mark.parametrize("per_slice", [False, True])
def test_compressed_transfer_syntaxes(tmp_path, codec, per_slice):
    """Homogeneous rescale goes through GDCM, per-slice rescale through pydicom: same HU."""
    hu = _hu((3, 32, 33))
    intercepts = [-1024.0, -1000.0, -2000.0] if per_slice else None
    files = write_series(tmp_path, hu, compress=codec, intercepts=intercepts)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID.is_compressed
    img, meta = read_dicom_series(tmp_path, progress=False)
    assert np.array_equal(_arr(img), hu)
    assert img.GetPixelID() == sitk.sitkInt16 and img.GetMetaDataKeys() == ()
    assert meta["transfer_syntax"] != "1.2.840.10008.1.2.1"


def test_jpeg_ls_decodes(tmp_path):
    """pydicom's JPEG-LS lossless MR file, relabelled CT, decodes to the uncompressed reference."""
    ls = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    ref = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ls.Modality = "CT"
    ls.save_as(tmp_path / "a.dcm")
    img, _ = read_dicom_series(tmp_path, progress=False)
    expect = ref.pixel_array * float(ref.get("RescaleSlope", 1)) + float(
        ref.get("RescaleIntercept", 0)
    )
    assert np.array_equal(_arr(img)[0], expect)


def test_ct_small_matches_pydicom(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    img, meta = read_dicom_series(tmp_path, progress=False)
    assert np.array_equal(_arr(img)[0], read_stored_hu(tmp_path / "ct.dcm"))
    assert img.GetSpacing()[:2] == pytest.approx((0.661468, 0.661468))
    assert img.GetOrigin() == pytest.approx((-158.135803, -179.035797, -75.699997))


def test_enhanced_multiframe(tmp_path):
    hu = _hu((4, 5, 6))
    slopes = [1.0, 1.0, 2.0, 1.0]
    hu[2] = np.round((hu[2] + 1024) / 2) * 2 - 1024
    write_enhanced(
        tmp_path / "mf.dcm", hu, slopes=slopes, frame_order=[2, 0, 3, 1], origin=(1, 2, 3)
    )
    img, meta = read_dicom_series(tmp_path, progress=False)
    assert meta["multiframe"] is True
    assert np.array_equal(_arr(img), hu)
    assert img.GetOrigin() == pytest.approx((1, 2, 3))
    assert img.GetSpacing() == pytest.approx((0.8, 0.7, 2.0))


def test_thickness_differs_from_spacing_is_a_warning(tmp_path):
    write_series(tmp_path, _hu((3, 4, 4)), spacing=(1, 1, 2.0), thickness=3.0)
    _, meta = read_dicom_series(tmp_path, progress=False)
    assert meta["slice_thickness_mm"] == 3.0 and meta["slice_spacing_mm"] == pytest.approx(2.0)
    assert any("thickness 3 mm differs from slice spacing 2 mm" in w for w in meta["warnings"])


def test_missing_slice_error_and_resample(tmp_path):
    hu = np.stack([np.full((4, 4), 10.0 * k) for k in range(6)])
    pos = [(0, 0, 2.0 * k) for k in range(6)]
    keep = [0, 1, 2, 4, 5]
    write_series(tmp_path, hu[keep], positions=[pos[k] for k in keep])
    with pytest.raises(InputError, match="1 missing slice") as err:
        read_dicom_series(tmp_path, case="gap", progress=False)
    assert err.value.case == "gap" and err.value.path is not None
    img, meta = read_dicom_series(tmp_path, ingest={"uneven_spacing": "resample"}, progress=False)
    assert img.GetSize()[2] == 6 and img.GetSpacing()[2] == pytest.approx(2.0)
    # the missing slice is interpolated linearly between its neighbours (20 and 40 -> 30)
    assert np.allclose(_arr(img)[:, 0, 0], [0, 10, 20, 30, 40, 50])
    assert meta["missing_slices"] == 1 and any("uneven" in w for w in meta["warnings"])


def test_gantry_tilt_error_and_resample(tmp_path):
    """Each slice shifted 1 voxel in y per slice: a tilted stack. Resampling de-shears it."""
    base = np.zeros((8, 8))
    base[2, 3] = 1000
    hu = np.stack([base] * 4)
    pos = [(0.0, 1.0 * k, 2.0 * k) for k in range(4)]
    write_series(tmp_path, hu, spacing=(1, 1, 2), positions=pos)
    with pytest.raises(InputError, match="gantry tilt"):
        read_dicom_series(tmp_path, case="tilt", progress=False)
    img, meta = read_dicom_series(tmp_path, ingest={"gantry_tilt": "resample"}, progress=False)
    assert meta["gantry_tilt_deg"] == pytest.approx(np.degrees(np.arctan(0.5)), abs=1e-3)
    arr = _arr(img)
    # the bright voxel of slice k lies at world y = 2 + k: index y = 2 + k on the orthogonal grid
    for k in range(4):
        assert arr[k, 2 + k, 3] == pytest.approx(1000 - 1024 + 1024, abs=1e-3)
    assert img.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))


# ---- bad input: each error names the case and the file ---------------------------------------


def _assert_names(err, case, fragment):
    assert err.case == case
    assert err.path is not None and fragment in str(err.path)
    assert case in str(err) and fragment in str(err)


def test_truncated_file(tmp_path):
    files = write_series(tmp_path, _hu((3, 8, 8)))
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) - 50])
    with pytest.raises(InputError, match="truncated") as e:
        read_dicom_series(tmp_path, case="tr", progress=False)
    _assert_names(e.value, "tr", files[1].name)


def test_truncated_compressed_file(tmp_path):
    files = write_series(tmp_path, _hu((2, 8, 8)), compress="rle")
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) - 30])
    with pytest.raises(InputError) as e:
        read_dicom_series(tmp_path, case="trc", progress=False)
    _assert_names(e.value, "trc", files[0].name)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(InputError, match="no DICOM") as e:
        read_dicom_series(tmp_path, case="empty", progress=False)
    _assert_names(e.value, "empty", tmp_path.name)


def test_mr_in_ct_run(tmp_path):
    files = write_series(tmp_path, _hu((2, 4, 4)), modality="MR")
    with pytest.raises(InputError, match="modality MR") as e:
        read_dicom_series(tmp_path, case="mr", progress=False)
    _assert_names(e.value, "mr", files[0].name)


def test_missing_pixel_data(tmp_path):
    files = write_series(tmp_path, _hu((2, 4, 4)))
    ds = pydicom.dcmread(files[1])
    del ds.PixelData
    ds.save_as(files[1])
    with pytest.raises(InputError, match="no pixel data") as e:
        read_dicom_series(tmp_path, case="np", progress=False)
    _assert_names(e.value, "np", files[1].name)


def test_mixed_series_lists_them_and_choice_works(tmp_path):
    write_series(tmp_path, _hu((2, 4, 4)), series_uid="1.2.3.1", prefix="a")
    write_series(tmp_path, _hu((3, 4, 4), seed=1), series_uid="1.2.3.2", prefix="b")
    with pytest.raises(InputError) as e:
        read_dicom_series(tmp_path, case="mix", progress=False)
    msg = str(e.value)
    assert "1.2.3.1" in msg and "1.2.3.2" in msg and "2 files" in msg and "3 files" in msg
    _assert_names(e.value, "mix", tmp_path.name)
    img, meta = read_dicom_series(tmp_path, series_uid="1.2.3.2", progress=False)
    assert img.GetSize()[2] == 3 and meta["series_uid"] == "1.2.3.2"


def test_duplicate_positions(tmp_path):
    files = write_series(tmp_path, _hu((3, 4, 4)), positions=[(0, 0, 0), (0, 0, 2), (0, 0, 2)])
    with pytest.raises(InputError, match="duplicate slice position") as e:
        read_dicom_series(tmp_path, case="dup", progress=False)
    assert e.value.case == "dup" and e.value.path.name in {files[1].name, files[2].name}


def test_inconsistent_rows_cols(tmp_path):
    write_series(tmp_path, _hu((2, 4, 4)), series_uid="9.9", prefix="a")
    bad = write_series(
        tmp_path, _hu((1, 5, 4)), series_uid="9.9", prefix="b", positions=[(0, 0, 10)]
    )
    with pytest.raises(InputError, match="inconsistent image size") as e:
        read_dicom_series(tmp_path, case="rc", progress=False)
    _assert_names(e.value, "rc", bad[0].name)


def test_real_series_matches_simpleitk(real_series_dir):
    img, meta = read_dicom_series(real_series_dir, case="real", progress=False)
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(real_series_dir)))
    ref = r.Execute()
    assert img.GetSize() == ref.GetSize() == (512, 512, 20)
    assert img.GetSpacing() == pytest.approx(ref.GetSpacing())
    assert img.GetOrigin() == pytest.approx(ref.GetOrigin())
    assert img.GetDirection() == pytest.approx(ref.GetDirection())
    assert np.array_equal(_arr(img), _arr(ref))
    assert meta["slice_thickness_mm"] == 3.0 and meta["slice_spacing_mm"] == pytest.approx(2.0)
    assert any("thickness" in w for w in meta["warnings"])
    assert meta["transfer_syntax"] == "1.2.840.10008.1.2.4.90"


def test_oblique_phantom_series_round_trip(tmp_path):
    """ctseg.phantom on a rotated grid, written by ctseg.ingest.dicomwrite: voxels and geometry back."""
    import ctseg.phantom as phantom
    from ctseg.ingest.dicomwrite import write_dicom_series

    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    direction = (c, 0, s, 0, 1, 0, -s, 0, c)  # rotation about y
    ph = phantom.generate(
        4,
        {
            "shape": [24, 20, 16],
            "spacing_mm": [10.0, 10.0, 12.0],
            "direction": direction,
            "origin_mm": [-100.0, -90.0, -80.0],
        },
        progress=False,
    )
    write_dicom_series(ph.hu, ph.spacing, ph.origin, ph.direction, tmp_path / "s", seed=4)
    img, meta = read_dicom_series(tmp_path / "s", case="obl", progress=False)
    assert np.array_equal(sitk.GetArrayFromImage(img), ph.hu)
    assert img.GetDirection() == pytest.approx(direction, abs=1e-6)
    assert img.GetOrigin() == pytest.approx(ph.origin, abs=1e-3)
    assert img.GetSpacing() == pytest.approx(ph.spacing)
    assert meta["gantry_tilt_deg"] == pytest.approx(0, abs=1e-3) and meta["warnings"] == []
