"""DICOM-SEG output: read back with highdicom, frames map to the right source slices."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ctseg.core.errors import InputError
from ctseg.formats.dicom_seg import read_dicom_seg_labels, write_dicom_seg
from ctseg.ingest.dicomwrite import write_dicom_series


def tilted_direction() -> tuple[float, ...]:
    a = 0.25
    d = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return tuple(d.ravel())


@pytest.fixture()
def series(tmp_path):
    """A 6-slice oblique series, read back as SimpleITK does, plus a label map on its grid."""
    hu = (np.arange(6 * 9 * 11).reshape(6, 9, 11) % 200 - 100).astype(np.int16)
    files = write_dicom_series(
        hu, (0.8, 0.9, 2.0), (-30.0, 12.0, 100.0), tilted_direction(), tmp_path / "dcm", seed=3
    )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    ct = reader.Execute()
    lab = np.zeros(hu.shape, np.uint8)
    lab[1:3, 2:5, 3:8] = 20  # L1 on slices 1-2
    lab[3:5, 4:8, 2:6] = 21  # L2 on slices 3-4
    lab[4, 0, 0] = 28  # T13, one voxel on slice 4
    labels = sitk.GetImageFromArray(lab)
    labels.CopyInformation(ct)
    return files, labels, lab


@pytest.mark.parametrize("kind", ["BINARY", "LABELMAP"])
def test_seg_reads_back_with_right_segments_and_frames(tmp_path, series, kind):
    files, labels, lab = series
    # hand the files over shuffled: frame mapping must go by geometry, not by order
    shuffled = [files[i] for i in (4, 0, 5, 2, 1, 3)]
    out = write_dicom_seg(labels, shuffled, tmp_path / "seg.dcm", segmentation_type=kind)
    seg = hd.seg.segread(str(out))
    # (highdicom 0.28's number_of_segments miscounts a LABELMAP's background segment)
    assert seg.get_segment_numbers() == [1, 2, 3]
    info = read_dicom_seg_labels(out)
    assert info["labels"] == {1: "L1", 2: "L2", 3: "T13"}
    assert info["tracking"] == {1: 20, 2: 21, 3: 28}
    desc = seg.get_segment_description(1)
    assert desc.segmented_property_type.value == "66794005"
    assert desc.segmented_property_category.value == "91723000"
    assert desc.algorithm_identification[0].AlgorithmName == "ctseg"
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    assert set(info["sources"]) == set(uids)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, relabel=False
    )
    seg_to_verse = np.array([0, 20, 21, 28])
    assert pixels.shape == lab.shape
    # slice k of the series is file k (write_dicom_series), so the frames equal the labels
    assert np.array_equal(seg_to_verse[pixels], lab)
    ds = pydicom.dcmread(out)
    assert (
        ds.Modality == "SEG" and ds.SeriesInstanceUID != pydicom.dcmread(files[0]).SeriesInstanceUID
    )
    assert ds.FrameOfReferenceUID == pydicom.dcmread(files[0]).FrameOfReferenceUID


@pytest.mark.parametrize("kind", ["flip", "permute"])
def test_seg_follows_a_reoriented_label_grid(tmp_path, series, kind):
    """The same labels on a grid with x and z flipped, or with permuted axes, give the same
    frames: each source slice is found by geometry."""
    files, labels, lab = series
    if kind == "flip":
        grid = sitk.Flip(labels, [True, False, True])
    else:
        grid = sitk.PermuteAxes(labels, [1, 2, 0])  # label axes (y, z, x)
    out = write_dicom_seg(grid, files, tmp_path / "seg.dcm")
    seg = hd.seg.segread(str(out))
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    px = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, relabel=False
    )
    assert np.array_equal(np.array([0, 20, 21, 28])[px], lab)


def test_off_grid_source_and_empty_labels_are_errors(tmp_path, series):
    files, labels, _ = series
    shifted = sitk.Image(labels)
    shifted.SetOrigin(tuple(np.add(labels.GetOrigin(), (0.3, 0.0, 0.0))))
    with pytest.raises(InputError, match="grid") as err:
        write_dicom_seg(shifted, files, tmp_path / "a.dcm")
    assert str(files[0].name) in str(err.value) or "IM0000" in str(err.value)
    empty = sitk.Image(labels.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(labels)
    with pytest.raises(InputError, match="no vertebra"):
        write_dicom_seg(empty, files, tmp_path / "b.dcm")
    small = labels[:, :, :3]  # a label image covering only half the slices
    with pytest.raises(InputError, match="outside"):
        write_dicom_seg(small, files, tmp_path / "c.dcm")
    assert not list(tmp_path.glob("*.dcm"))


def test_anonymised_sources(tmp_path, series):
    """Blank SOP Class / Study UIDs are restored; blank or repeated SOP Instance UIDs refused."""
    files, labels, lab = series
    dss = [pydicom.dcmread(f) for f in files]
    for ds in dss:
        ds.SOPClassUID = ""
        ds.StudyInstanceUID = ""
    out = write_dicom_seg(labels, dss, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(out)
    assert seg.StudyInstanceUID and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert dss[0].SOPClassUID == ""  # the caller's datasets are left alone
    dss[2].SOPInstanceUID = dss[1].SOPInstanceUID
    with pytest.raises(InputError, match="repeats the SOP Instance UID"):
        write_dicom_seg(labels, dss, tmp_path / "b.dcm")
    dss[2].SOPInstanceUID = ""
    with pytest.raises(InputError, match="no SOP Instance UID"):
        write_dicom_seg(labels, dss, tmp_path / "c.dcm")
    dss[2].SOPInstanceUID = "1.2.3.4.5"
    dss[3].SeriesInstanceUID = ""
    with pytest.raises(InputError, match="no Series Instance UID"):
        write_dicom_seg(labels, dss, tmp_path / "d.dcm")
