"""DICOM-SEG output for DICOM input: one segment per vertebra, referencing the source series.

A PACS or viewer that holds the source series can show a DICOM Segmentation object next to it
(each frame points back at the source slice's SOP Instance UID). The SEG is built with
highdicom from the label image on the source grid: every source slice is located in the label
image through its ImagePositionPatient and the in-plane pixel steps, so the frames follow the
source slices whatever order or flips the label image's own axes have. A source slice that does
not lie on the label grid, or that has no (or a repeated) SOP Instance UID to be referenced by,
is an InputError naming that file.

Segment numbers are 1..n in VerSe-id order (DICOM requires consecutive numbers); each
segment's label is the VerSe name and its tracking id ``verse:<id>``, its property the SNOMED
code of the level (:mod:`ctseg.formats.terminology`), its algorithm ctseg with its version.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

import ctseg
from ctseg.core.atomic import atomic_path
from ctseg.core.errors import InputError
from ctseg.core.labels import VERSE_NAMES
from ctseg.formats.colors import color_of
from ctseg.formats.grid import label_array, world_to_index
from ctseg.formats.terminology import CATEGORY, SCT, type_code

#: How far (in voxels) a source pixel may sit from a label voxel centre.
GRID_TOL = 1e-2


def _usable(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds``, with the identifying UIDs that anonymisers blank filled in (on a copy).

    An empty SOPClassUID is restored from the file meta's MediaStorageSOPClassUID (the same
    value by definition); an empty StudyInstanceUID gets a UID derived from the series UID, so
    the SEG still names a study (the same one for every SEG of that series).
    """
    if str(getattr(ds, "SOPClassUID", "")) and str(getattr(ds, "StudyInstanceUID", "")):
        return ds
    ds = copy.deepcopy(ds)
    if not str(getattr(ds, "SOPClassUID", "")):
        meta = getattr(ds, "file_meta", None)
        ds.SOPClassUID = getattr(meta, "MediaStorageSOPClassUID", "") if meta is not None else ""
    if not str(getattr(ds, "StudyInstanceUID", "")):
        ds.StudyInstanceUID = pydicom.uid.generate_uid(
            entropy_srcs=["ctseg-study-of", str(getattr(ds, "SeriesInstanceUID", ""))]
        )
    return ds


def _read_sources(
    files: Sequence[str | Path | pydicom.Dataset],
) -> list[tuple[str, pydicom.Dataset]]:
    out = []
    for f in files:
        if isinstance(f, pydicom.Dataset):
            out.append((str(getattr(f, "filename", "") or f.SOPInstanceUID), _usable(f)))
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)  # geometry and UIDs only
        except Exception as exc:  # pydicom raises several types for a non-DICOM file
            raise InputError(f"not a readable DICOM file ({exc})", path=f) from exc
        if (
            not str(getattr(ds, "SOPClassUID", ""))
            and "MediaStorageSOPClassUID" not in ds.file_meta
        ):
            raise InputError("source slice has no SOP Class UID", path=f)
        out.append((str(f), _usable(ds)))
    if not out:
        raise InputError("no source DICOM files given for the DICOM-SEG")
    seen: dict[str, str] = {}
    for name, ds in out:
        uid = str(getattr(ds, "SOPInstanceUID", ""))
        if not uid:
            raise InputError(
                "source slice has no SOP Instance UID (blanked by an anonymiser?); a DICOM-SEG "
                "cannot reference it",
                path=name,
            )
        if uid in seen:
            raise InputError(f"source slice repeats the SOP Instance UID of {seen[uid]}", path=name)
        if not str(getattr(ds, "SeriesInstanceUID", "")):
            raise InputError(
                "source slice has no Series Instance UID; a DICOM-SEG cannot reference its series",
                path=name,
            )
        seen[uid] = name
    return out


def _frame_of(arr_xyz: np.ndarray, img: sitk.Image, name: str, ds: pydicom.Dataset) -> np.ndarray:
    """The label values under every pixel of source slice ``ds`` (rows x columns)."""
    try:
        ipp = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        row_sp, col_sp = (float(v) for v in ds.PixelSpacing)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, ValueError, TypeError) as exc:
        raise InputError(f"source slice lacks its geometry ({exc})", path=name) from exc
    # Pixel (r, c) lies at ipp + c * col_sp * iop[:3] + r * row_sp * iop[3:].
    p0 = world_to_index(img, ipp)
    dc = world_to_index(img, ipp + col_sp * iop[:3]) - p0
    dr = world_to_index(img, ipp + row_sp * iop[3:]) - p0
    steps = np.stack([p0, dc, dr])
    if np.abs(steps - np.round(steps)).max() > GRID_TOL:
        raise InputError("source slice does not lie on the label image's grid", path=name)
    p0, dc, dr = (np.round(v).astype(np.int64) for v in (p0, dc, dr))
    size = arr_xyz.shape
    ends = [p0 + (rows - 1) * dr, p0 + (cols - 1) * dc, p0 + (rows - 1) * dr + (cols - 1) * dc]
    for q in (p0, *ends):
        if np.any(q < 0) or np.any(q >= np.asarray(size)):
            raise InputError("source slice lies outside the label image", path=name)
    ac, ar = int(np.argmax(np.abs(dc))), int(np.argmax(np.abs(dr)))
    if np.abs(dc).sum() == 1 and np.abs(dr).sum() == 1 and ac != ar:
        # Rows and columns run along label axes (the usual case): plain strided slicing.
        sl: list[slice | int] = [int(p0[a]) for a in range(3)]
        for a, step, n in ((ar, int(dr[ar]), rows), (ac, int(dc[ac]), cols)):
            stop = int(p0[a]) + step * n
            sl[a] = slice(int(p0[a]), None if stop < 0 else stop, step)
        frame = arr_xyz[tuple(sl)]
        return frame if ar < ac else frame.T
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    idx = [p0[a] + r * dr[a] + c * dc[a] for a in range(3)]
    return arr_xyz[idx[0], idx[1], idx[2]]


def segment_descriptions(labels: Sequence[int]) -> list[hd.seg.SegmentDescription]:
    """One highdicom SegmentDescription per VerSe id, numbered 1..n in the given order."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="ctseg", family=codes.cid7162.ArtificialIntelligence, version=ctseg.__version__
    )
    out = []
    for n, label in enumerate(labels, start=1):
        value, meaning = type_code(label)
        out.append(
            hd.seg.SegmentDescription(
                segment_number=n,
                segment_label=VERSE_NAMES.get(int(label), str(label)),
                segmented_property_category=Code(CATEGORY[0], SCT, CATEGORY[1]),
                segmented_property_type=Code(value, SCT, meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=f"verse:{int(label)}",
                display_color=hd.color.CIELabColor.from_rgb(
                    *(int(round(255 * v)) for v in color_of(label))
                ),
            )
        )
    return out


def write_dicom_seg(
    labels: sitk.Image,
    source_dicom_files: Sequence[str | Path | pydicom.Dataset],
    path: str | Path,
    *,
    segmentation_type: str = "BINARY",
    series_number: int = 300,
    series_description: str = "ctseg vertebrae",
) -> Path:
    """Write ``labels`` (VerSe ids, on the source series' grid) as a DICOM-SEG at ``path``.

    ``source_dicom_files`` are the source series' slices (paths or datasets), in any order.
    ``segmentation_type`` is "BINARY" (one bit plane per segment, read by every SEG reader) or
    "LABELMAP" (the newer Label Map SEG, one frame per slice). Returns ``path``.
    """
    path = Path(path)
    arr = label_array(labels)
    arr_xyz = arr.transpose(2, 1, 0)
    present = [int(v) for v in np.unique(arr) if v != 0]
    if not present:
        raise InputError("the label image holds no vertebra; a DICOM-SEG needs a segment")
    sources = _read_sources(source_dicom_files)
    frame_of_ref = {str(getattr(ds, "FrameOfReferenceUID", "")) for _, ds in sources}
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in sources}
    if len(series) > 1 or len(frame_of_ref) > 1:
        raise InputError(
            f"source files belong to {len(series)} series / {len(frame_of_ref)} frames of "
            "reference; a DICOM-SEG references one series",
            path=sources[0][0],
        )
    seg_number = {label: n for n, label in enumerate(present, start=1)}
    lut = np.zeros(max(present) + 1, dtype=np.uint16)
    for label, n in seg_number.items():
        lut[label] = n
    frames = np.stack([lut[_frame_of(arr_xyz, labels, name, ds)] for name, ds in sources])
    kind = hd.seg.SegmentationTypeValues(segmentation_type.upper())
    seg = hd.seg.Segmentation(
        source_images=[ds for _, ds in sources],
        pixel_array=frames.astype(np.uint8 if len(present) < 256 else np.uint16),
        segmentation_type=kind,
        segment_descriptions=segment_descriptions(present),
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ctseg",
        manufacturer_model_name="ctseg vertebra segmentation",
        software_versions=ctseg.__version__,
        device_serial_number="0",
        content_label="VERTEBRAE",
        content_description=series_description[:64],
        series_description=series_description,
    )
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return path


def read_dicom_seg_labels(path: str | Path) -> dict[str, object]:
    """What a SEG reader sees: {"labels": {segment number: name}, "tracking": {..: VerSe id},
    "sources": referenced SOP Instance UIDs}. For tests and for checking a delivered file."""
    seg = hd.seg.segread(str(path))
    numbers = seg.get_segment_numbers()
    names = {n: seg.get_segment_description(n).segment_label for n in numbers}
    tracking = {}
    for n in numbers:
        tid = seg.get_segment_description(n).tracking_id or ""
        if tid.startswith("verse:"):
            tracking[n] = int(tid.split(":", 1)[1])
    sources = [uid for _, _, uid in seg.get_source_image_uids()]
    return {"labels": names, "tracking": tracking, "sources": sources}
