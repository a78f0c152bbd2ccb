"""Write a HU volume as a real, deterministic CT DICOM series.

The phantom is the workflow's default data, and other modules' tests need odd series (oblique,
tilted, a missing slice, a second series in the same folder). One general writer serves both:
it turns an int16 ``[z, y, x]`` HU array plus SimpleITK-style geometry into one uncompressed
Explicit VR Little Endian file per slice, CT Image Storage, with every attribute that ingestion
code reads (positions, orientation, spacing, rescale). Nothing depends on the wall clock or on
random state: UIDs derive from the seed and the pixel data, dates are fixed, so the same input
gives the same bytes, which is what makes the workflow's raw data reproducible.

Pixel storage: stored = HU + 1024 with RescaleSlope 1 / RescaleIntercept -1024, as unsigned
16-bit when HU lies in [-1024, 64511] (the common scanner choice), otherwise as signed 16-bit
(HU in [-33792, 31743]); anything else cannot be stored and raises ``ValueError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from ctseg.core.atomic import atomic_dir

RESCALE_INTERCEPT = -1024
#: Fixed, obviously synthetic dates and times: same input, same bytes.
FIXED_DATE = "20260101"
FIXED_TIME = "120000"

#: ``extra`` values may be a callable of the slice index (per-slice overrides).
ExtraValue = Any | Callable[[int], Any]


def _ds(value: float) -> str:
    """A DICOM Decimal String of at most 16 characters, as exact as that allows."""
    value = float(value) + 0.0  # no "-0.0"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return format_number_as_ds(value)


def _direction_matrix(direction: Sequence[float]) -> np.ndarray:
    """3x3 matrix (columns = index axes in world) from 9 row-major cosines; must be a rotation."""
    d = np.asarray(direction, dtype=np.float64)
    if d.shape != (9,):
        raise ValueError(f"direction must hold 9 cosines, got {d.size}")
    m = d.reshape(3, 3)
    if not np.allclose(m.T @ m, np.eye(3), atol=1e-6):
        raise ValueError("direction is not orthonormal")
    if np.linalg.det(m) < 0:
        # DICOM readers take the slice normal as row x column; a left-handed grid would be read
        # back flipped, so refuse it instead of writing a series that lies about its geometry.
        raise ValueError("direction must be right-handed (slice normal = row x column cosines)")
    return m


def slice_positions(shape_zyx: Sequence[int], spacing, origin, direction) -> np.ndarray:
    """ImagePositionPatient of every slice: origin + k * spacing_z * normal (world mm, LPS)."""
    m = _direction_matrix(direction)
    k = np.arange(int(shape_zyx[0]), dtype=np.float64)
    return (
        np.asarray(origin, np.float64)[None, :] + k[:, None] * float(spacing[2]) * m[:, 2][None, :]
    )


def _stored_pixels(hu: np.ndarray) -> tuple[np.ndarray, int]:
    """Stored pixel values and PixelRepresentation (0 unsigned, 1 signed) for ``hu``."""
    lo, hi = int(hu.min()), int(hu.max())
    stored = hu.astype(np.int32) - RESCALE_INTERCEPT
    if lo >= RESCALE_INTERCEPT and hi - RESCALE_INTERCEPT <= 65535:
        return stored.astype("<u2"), 0
    if lo - RESCALE_INTERCEPT >= -32768 and hi - RESCALE_INTERCEPT <= 32767:
        return stored.astype("<i2"), 1
    raise ValueError(f"HU range [{lo}, {hi}] does not fit 16-bit storage with intercept -1024")


def write_dicom_series(
    hu: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float] | None,
    out_dir: Path,
    *,
    seed: int,
    patient_name: str = "PHANTOM^CTSEG",
    patient_id: str | None = None,
    series_description: str = "ctseg phantom",
    extra: dict[str, ExtraValue] | None = None,
    per_slice: Callable[[int, Dataset], Dataset | None] | None = None,
    series_number: int = 1,
) -> list[Path]:
    """Write ``hu`` (integer HU, ``[z, y, x]``) as ``out_dir/IM00001.dcm ...``; return the paths.

    Geometry follows SimpleITK: ``spacing``/``origin`` are (x, y, z), ``direction`` 9 row-major
    cosines whose columns are the index axes in world (None = identity). Slice k (file k+1) sits
    at origin + k * spacing_z * normal. PixelSpacing is (row spacing = y, column spacing = x).

    ``extra`` maps DICOM keywords to values set on every slice after the defaults (a callable
    value is called with the slice index; ``None`` deletes the attribute), so tests can build
    odd series (GantryDetectorTilt, a second SeriesInstanceUID, ...). ``per_slice(k, ds)`` may
    edit or replace each dataset last. The directory is written atomically (replaced whole).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3 or hu.shape[0] < 1:
        raise ValueError(f"hu must be a 3-D [z, y, x] array, got shape {hu.shape}")
    if not np.issubdtype(hu.dtype, np.integer):
        if not np.all(np.equal(np.mod(hu, 1), 0)):
            raise ValueError("hu must hold integer HU values")
        hu = hu.astype(np.int32)
    spacing = tuple(float(s) for s in spacing)
    origin = tuple(float(o) for o in origin)
    direction = tuple(float(d) for d in (direction or np.eye(3).ravel()))
    m = _direction_matrix(direction)
    if min(spacing) <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    nz, ny, nx = hu.shape
    stored, pixel_representation = _stored_pixels(hu)
    positions = slice_positions(hu.shape, spacing, origin, direction)
    normal = m[:, 2]
    patient_id = patient_id if patient_id is not None else f"PHANTOM{seed}"

    # Deterministic UIDs: the study from who/what, the series also from the exact pixels and
    # geometry, so two different volumes never share a series UID.
    digest = hashlib.sha256(np.ascontiguousarray(stored).tobytes()).hexdigest()
    geometry = repr((hu.shape, spacing, origin, direction))
    study_uid = generate_uid(entropy_srcs=["ctseg-study", str(seed), patient_id])
    series_uid = generate_uid(
        entropy_srcs=["ctseg-series", str(seed), patient_id, series_description, geometry, digest]
    )
    frame_uid = generate_uid(entropy_srcs=["ctseg-frame", series_uid])
    iop = [_ds(v) for v in (*m[:, 0], *m[:, 1])]

    with atomic_dir(out_dir) as tmp:
        names = []
        for k in range(nz):
            sop_uid = generate_uid(entropy_srcs=["ctseg-sop", series_uid, str(k)])
            ds = _slice_dataset(
                k,
                stored[k],
                pixel_representation,
                ny=ny,
                nx=nx,
                spacing=spacing,
                position=positions[k],
                iop=iop,
                slice_location=float(positions[k] @ normal),
                uids=(study_uid, series_uid, frame_uid, sop_uid),
                patient_name=patient_name,
                patient_id=patient_id,
                series_description=series_description,
                series_number=series_number,
            )
            for keyword, value in (extra or {}).items():
                value = value(k) if callable(value) else value
                if value is None:
                    if keyword in ds:
                        delattr(ds, keyword)
                else:
                    setattr(ds, keyword, value)
            if per_slice is not None:
                ds = per_slice(k, ds) or ds
            name = f"IM{k + 1:05d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)
            names.append(name)
    return [Path(out_dir) / n for n in names]


def _slice_dataset(
    k: int,
    pixels: np.ndarray,
    pixel_representation: int,
    *,
    ny: int,
    nx: int,
    spacing: tuple[float, float, float],
    position: np.ndarray,
    iop: list[str],
    slice_location: float,
    uids: tuple[str, str, str, str],
    patient_name: str,
    patient_id: str,
    series_description: str,
    series_number: int,
) -> Dataset:
    """One CT Image Storage dataset (with file meta) for slice ``k``."""
    study_uid, series_uid, frame_uid, sop_uid = uids
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = FIXED_DATE
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = FIXED_TIME
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "ctseg phantom"
    ds.ManufacturerModelName = "ctseg synthetic torso"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "ctseg synthetic CT"
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "SPINE"
    ds.SliceThickness = _ds(spacing[2])
    ds.KVP = "120"
    ds.SpacingBetweenSlices = _ds(spacing[2])
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = iop
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(round(slice_location, 6))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (y), column spacing (x)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = pixel_representation
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OW"
    return ds
