"""All standard outputs of one case from a phantom stored as DICOM, read back by their readers."""

from __future__ import annotations

import json

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from ctseg.core.errors import InputError
from ctseg.evaluation.centroids import centroids_from_labels
from ctseg.formats.centroid_io import read_centroids
from ctseg.formats.dicom_seg import write_dicom_seg
from ctseg.formats.outputs import write_case_outputs
from ctseg.ingest.dicomwrite import write_dicom_series
from ctseg.phantom import generate


def test_case_outputs_from_a_dicom_phantom(tmp_path):
    ph = generate(5, {"shape": [64, 56, 72], "spacing_mm": [4.0, 4.0, 4.0], "first_level": "T9"})
    files = write_dicom_series(ph.hu, ph.spacing, ph.origin, ph.direction, tmp_path / "dcm", seed=5)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    ct = reader.Execute()
    labels = sitk.GetImageFromArray(ph.labels)
    labels.CopyInformation(ct)

    paths = write_case_outputs(labels, ct, tmp_path / "out", source_dicom_files=files, title="ph05")
    assert set(paths) == {
        "labels", "seg_nrrd", "dicom_seg", "centroids", "centroids_verse", "centroids_markups",
        "statistics", "statistics_tsv", "qc", "qc_png",
    }  # fmt: skip
    back = sitk.ReadImage(str(paths["labels"]))
    assert np.array_equal(sitk.GetArrayFromImage(back), ph.labels)
    assert np.allclose(back.GetOrigin(), ct.GetOrigin())

    present = sorted(int(v) for v in np.unique(ph.labels) if v)
    _, h = nrrd.read(str(paths["seg_nrrd"]))
    assert sorted(int(h[f"Segment{i}_LabelValue"]) for i in range(len(present))) == present

    seg = hd.seg.segread(str(paths["dicom_seg"]))
    assert len(seg.get_segment_numbers()) == len(present)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    px = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, relabel=False
    )
    assert np.array_equal(np.array([0, *present])[px], ph.labels)

    truth = {c["label"]: c for c in centroids_from_labels(labels)}
    for key in ("centroids", "centroids_verse", "centroids_markups"):
        rows = read_centroids(paths[key], ct)
        assert [r["label"] for r in rows] == sorted(truth)
        for r in rows:
            t = truth[r["label"]]
            assert np.allclose(r["world"], [t["x"], t["y"], t["z"]], atol=0.05), key

    stats = json.loads(paths["statistics"].read_text())
    assert [r["label"] for r in stats["levels"]] == present
    qc = json.loads(paths["qc"].read_text())
    assert qc["trusted"], qc["flags"]
    with Image.open(paths["qc_png"]) as im:
        assert im.size == (900, 700)


@pytest.mark.real
def test_real_series_outputs(real_series_dir, real_labels_path, tmp_path):
    """The shared real series with its TotalSegmentator labels: every output, SEG frames right."""
    from ctseg.core.labels import TOTALSEG_V2_TO_VERSE, apply_label_map

    files = sorted(real_series_dir.iterdir())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(reader.GetGDCMSeriesFileNames(str(real_series_dir))))
    ct = reader.Execute()
    raw = sitk.ReadImage(str(real_labels_path))
    labels = sitk.GetImageFromArray(
        apply_label_map(sitk.GetArrayFromImage(raw), TOTALSEG_V2_TO_VERSE)
    )
    labels.CopyInformation(ct)
    # this anonymised series has blank SOP Instance UIDs: nothing a SEG could reference
    with pytest.raises(InputError, match="no SOP Instance UID"):
        write_case_outputs(labels, ct, tmp_path, source_dicom_files=files, png=False)
    qc = json.loads((tmp_path / "qc.json").read_text())
    assert qc["trusted"] and qc["measures"]["n_levels"] == 2
    assert not (tmp_path / "labels.seg.dcm").exists()
    # with UIDs restored (as a PACS export has them) the SEG frames match the labels
    by_z = sorted(
        (pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2])
    )
    series_uid = pydicom.uid.generate_uid(entropy_srcs=["real series"])
    for n, d in enumerate(by_z):
        d.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["real", str(n)])
        d.SeriesInstanceUID = series_uid
    out = write_dicom_seg(labels, by_z, tmp_path / "seg.dcm")
    seg = hd.seg.segread(str(out))
    names = [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()]
    assert names == ["T11", "T12"]
    uids = [d.SOPInstanceUID for d in by_z]
    px = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, relabel=False
    )
    assert np.array_equal(np.array([0, 18, 19])[px], sitk.GetArrayFromImage(labels))


@pytest.mark.parametrize(
    "perm,flip",
    [([0, 1, 2], [False] * 3), ([1, 2, 0], [True, False, True]), ([2, 0, 1], [False, True, False])],
)
def test_qc_picture_view_equals_dicomorient(perm, flip, tmp_path):
    """The QC picture's no-copy LPS view of a permuted / flipped grid is SimpleITK's LPS image."""
    from ctseg.report.qc_png import _lps_view, write_qc_png

    arr = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.7, 2.0))
    img = sitk.Flip(sitk.PermuteAxes(img, perm), flip)
    view, spacing, _ = _lps_view(img)
    ref = sitk.DICOMOrient(img, "LPS")
    assert np.array_equal(view, sitk.GetArrayViewFromImage(ref))
    assert np.allclose(spacing, ref.GetSpacing())
    labels = sitk.Cast(img > 100, sitk.sitkUInt8) * 20
    assert write_qc_png(labels, img, tmp_path / "q.png").stat().st_size > 1000
