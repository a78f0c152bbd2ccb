"""Build small, deliberately odd DICOM series for tests (pydicom only, no phantom needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
PATIENT_NAME = "Secret^Patient"
PATIENT_ID = "PID-778899"


def _base(series_uid: str, modality: str, sop_class: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "TestScan 1"
    ds.KVP = 120
    ds.ConvolutionKernel = "B30f"
    ds.SeriesDescription = f"test {modality}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def write_series(
    out_dir: Path,
    hu: np.ndarray,
    *,
    spacing=(0.8, 0.7, 2.0),
    origin=(-10.0, -20.0, 30.0),
    iop=(1, 0, 0, 0, 1, 0),
    positions: list | None = None,
    slopes: list | None = None,
    intercepts: list | None = None,
    thickness: float | None = None,
    series_uid: str | None = None,
    modality: str = "CT",
    instance_numbers: list | None = None,
    compress: str | None = None,
    prefix: str = "s",
) -> list[Path]:
    """Write ``hu`` ([z, y, x]) as one file per slice; stored = (hu - intercept) / slope (int16).

    ``spacing`` is (x, y, z); default positions step along the IOP normal. InstanceNumbers
    default to reverse order so that ordering by them would be wrong.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    n = hu.shape[0]
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row, col)
    if positions is None:
        positions = [np.asarray(origin, float) + k * spacing[2] * normal for k in range(n)]
    slopes = slopes or [1.0] * n
    intercepts = intercepts or [-1024.0] * n
    instance_numbers = instance_numbers or list(range(n, 0, -1))
    files = []
    for k in range(n):
        ds = _base(series_uid, modality, CTImageStorage)
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.SliceThickness = float(thickness if thickness is not None else spacing[2])
        ds.SliceLocation = float(-k)  # deliberately misleading
        ds.InstanceNumber = int(instance_numbers[k])
        ds.RescaleSlope = float(slopes[k])
        ds.RescaleIntercept = float(intercepts[k])
        stored = np.round((hu[k].astype(np.float64) - intercepts[k]) / slopes[k]).astype(np.int16)
        ds.PixelData = stored.tobytes()
        if compress == "rle":
            ds.compress(RLELossless, stored)
        elif compress == "j2k":
            ds.compress("1.2.840.10008.1.2.4.90", stored)
        path = out_dir / f"{prefix}{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_enhanced(
    path: Path,
    hu: np.ndarray,
    *,
    spacing=(0.8, 0.7, 2.0),
    origin=(-10.0, -20.0, 30.0),
    slopes: list | None = None,
    intercepts: list | None = None,
    frame_order: list | None = None,
) -> Path:
    """One enhanced multi-frame CT file; ``frame_order`` permutes which z goes into which frame."""
    n = hu.shape[0]
    frame_order = frame_order or list(range(n))[::-1]
    slopes = slopes or [1.0] * n
    intercepts = intercepts or [-1024.0] * n
    ds = _base(generate_uid(), "CT", ENHANCED_CT)
    ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
    ds.NumberOfFrames = n
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    pm = Dataset()
    pm.PixelSpacing = [float(spacing[1]), float(spacing[0])]
    pm.SliceThickness = float(spacing[2])
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelMeasuresSequence = Sequence([pm])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    stored = np.empty(hu.shape, np.int16)
    for f, z in enumerate(frame_order):
        fg = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [
            float(origin[0]),
            float(origin[1]),
            float(origin[2] + z * spacing[2]),
        ]
        fg.PlanePositionSequence = Sequence([pp])
        pv = Dataset()
        pv.RescaleSlope = float(slopes[z])
        pv.RescaleIntercept = float(intercepts[z])
        pv.RescaleType = "HU"
        fg.PixelValueTransformationSequence = Sequence([pv])
        frames.append(fg)
        stored[f] = np.round((hu[z] - intercepts[z]) / slopes[z]).astype(np.int16)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = stored.tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def read_stored_hu(path: Path) -> np.ndarray:
    """Independent reference: pydicom pixel array x slope + intercept, float64."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
