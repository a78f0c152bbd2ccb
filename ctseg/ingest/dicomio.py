"""DICOM series discovery, slice ordering, consistency checks and decoding to HU.

Why not just ``sitk.ImageSeriesReader``: it silently picks one series out of a mixed folder,
says nothing about missing slices, duplicate positions, gantry tilt or non-CT modalities, and
names no file when something is wrong. Here every header is read first (pixel data deferred),
the slices are grouped by SeriesInstanceUID and ordered by their position projected on the
slice normal (the cross product of the ImageOrientationPatient cosines; InstanceNumber and
SliceLocation are never trusted), the geometry is checked, and only then are pixels decoded:
by SimpleITK/GDCM for plain homogeneous series (fast) and by pydicom (+ pylibjpeg for
JPEG 2000 / JPEG-LS, built-in RLE) for everything else, with each slice's own
RescaleSlope/RescaleIntercept.

Geometry convention (same as ITK/SimpleITK): x runs along the row cosine (IOP[0:3]) with
spacing PixelSpacing[1], y along the column cosine (IOP[3:6]) with spacing PixelSpacing[0],
z along the normal, origin = position of the first slice in normal order.

Header values are validated per file before they are used, each failure an InputError naming
the file: ImagePositionPatient must be 3 finite numbers, ImageOrientationPatient 6 finite
numbers forming two (near-)unit, orthogonal cosines (an all-zero IOP would give a NaN
direction), PixelSpacing 2 finite positive numbers, RescaleSlope / RescaleIntercept finite
numbers (slope non-zero, each within ``MAX_ABS_HU``: a slope of 1e38 would overflow float32),
the rescaled values of every slice finite and within +-``MAX_ABS_HU``, and the pixel format (BitsAllocated, BitsStored, PixelRepresentation,
SamplesPerPixel, PhotometricInterpretation) must be the same in every file of the series, since
a slice stored with another layout would be decoded wrongly. Missing RescaleSlope /
RescaleIntercept fall back to 1 / 0, as the standard allows for images stored in HU already.
Header-declared voxel counts are checked against ``ingest.max_voxels`` before any pixel is read.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from scipy import ndimage
from tqdm import tqdm

from ctseg.core.errors import InputError
from ctseg.core.limits import check_voxels

#: Positions closer than this along the normal are the same slice (mm).
DUPLICATE_TOL_MM = 1e-3
#: Relative deviation of one gap from the median gap that counts as uneven spacing.
GAP_REL_TOL = 0.01
#: Cosine tolerance for orientation consistency and tilt detection.
COS_TOL = 1e-4
#: Gantry tilt (deg) above which a stack counts as tilted (resampled or refused): the angle
#: whose cosine is ``1 - COS_TOL``, about 0.81 deg.
TILT_TOL_DEG = math.degrees(math.acos(1 - COS_TOL))
#: Sequence Delimitation Item that must close encapsulated (compressed) pixel data.
_SEQ_DELIM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
#: Largest |HU| a slope/intercept may map a stored value to: CT values stay within about
#: -1024..+32767; beyond this the header is corrupt (and float32 would lose integers).
MAX_ABS_HU = 1e6
#: Tolerance on the length of each IOP cosine and on their dot product.
IOP_TOL = 1e-2


@dataclass
class SliceRef:
    """One 2D frame of a series: where it lies and how to turn its values into HU."""

    path: Path
    frame: int | None  # frame index in a multi-frame file, None for single-frame files
    position: np.ndarray  # ImagePositionPatient (LPS mm)
    orientation: np.ndarray  # ImageOrientationPatient (6 cosines)
    pixel_spacing: tuple[float, float]  # (row spacing = y, column spacing = x)
    rows: int
    cols: int
    slope: float
    intercept: float
    thickness: float | None
    native: NativeLayout | None = None  # set when the pixels can be read straight from disk
    pixel_format: tuple = ()  # (BitsAllocated, BitsStored, PixelRepresentation, spp, photometric)


@dataclass(frozen=True)
class NativeLayout:
    """Where uncompressed little-endian pixels sit in a file, and how to interpret them."""

    offset: int  # byte offset of the first frame's first pixel
    dtype: str  # numpy dtype of the stored words ("<u2", "<i2", "u1", ...)
    bits_stored: int
    signed: bool


_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


@dataclass
class SeriesInfo:
    """A DICOM series found in a folder: its files, header facts and (once ordered) slices."""

    uid: str
    description: str
    modality: str
    files: list[Path] = field(default_factory=list)
    slices: list[SliceRef] = field(default_factory=list)
    header: dict = field(default_factory=dict)  # non-identifying facts for stats
    multiframe: bool = False
    transfer_syntaxes: set[str] = field(default_factory=set)


@dataclass
class SeriesGeometry:
    """Ordered slices and the grid they define, plus what was noticed on the way."""

    slices: list[SliceRef]
    origin: np.ndarray
    direction: np.ndarray  # 3x3, columns = x, y, z axes
    spacing: np.ndarray  # x, y, z (mm)
    offsets: np.ndarray  # position of each slice along the normal (mm)
    step: np.ndarray  # mean vector between consecutive positions (LPS mm)
    warnings: list[str]
    tilt_deg: float
    uneven: bool
    missing: int


def _num(value, default: float | None = None) -> float | None:
    try:
        if value is None or value == "":
            return default
        return float(value)
    except (TypeError, ValueError):
        return default


def _str(value) -> str:
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


_PIXEL_FORMAT = (
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
)


def _pixel_format(ds) -> tuple:
    return tuple(_str(ds.get(k)) for k in _PIXEL_FORMAT)


def _where(frame: int | None) -> str:
    return "" if frame is None else f"frame {frame}: "


def _floats(value, n: int, what: str, path: Path, case: str | None, frame=None) -> np.ndarray:
    """``n`` finite numbers from a header value, else an InputError naming the file."""
    try:
        vals = [
            float(v)
            for v in (
                value if isinstance(value, Iterable) and not isinstance(value, str) else [value]
            )
        ]
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{_where(frame)}{what} is not numeric ({value!r})", path=path, case=case
        ) from exc
    arr = np.asarray(vals, float)
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise InputError(
            f"{_where(frame)}{what} must be {n} finite numbers, got {_str(value)!r}",
            path=path,
            case=case,
        )
    return arr


def _geometry(pos, iop, ps, path: Path, case: str | None, frame=None):
    """Validated (position, orientation, pixel spacing) of one frame."""
    pos = _floats(pos, 3, "ImagePositionPatient", path, case, frame)
    iop = _floats(iop, 6, "ImageOrientationPatient", path, case, frame)
    ps = _floats(ps, 2, "PixelSpacing", path, case, frame)
    n_row, n_col = np.linalg.norm(iop[:3]), np.linalg.norm(iop[3:])
    if abs(n_row - 1) > IOP_TOL or abs(n_col - 1) > IOP_TOL:
        raise InputError(
            f"{_where(frame)}ImageOrientationPatient {iop.tolist()} does not hold two unit "
            f"direction cosines (lengths {n_row:.3g}, {n_col:.3g})",
            path=path,
            case=case,
        )
    if abs(float(iop[:3] @ iop[3:])) / (n_row * n_col) > IOP_TOL:
        raise InputError(
            f"{_where(frame)}ImageOrientationPatient {iop.tolist()}: row and column cosines "
            "are not orthogonal",
            path=path,
            case=case,
        )
    if np.any(ps <= 0):
        raise InputError(
            f"{_where(frame)}PixelSpacing {ps.tolist()} must be positive", path=path, case=case
        )
    return pos, iop, (float(ps[0]), float(ps[1]))


def _rescale(slope, intercept, path: Path, case: str | None, frame=None):
    """Validated (slope, intercept); missing values fall back to 1 / 0 (standard default)."""
    out = []
    for value, name, default in (
        (slope, "RescaleSlope", 1.0),
        (intercept, "RescaleIntercept", 0.0),
    ):
        if value is None or (isinstance(value, str) and not value.strip()):
            out.append(default)
            continue
        try:
            v = float(value)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"{_where(frame)}{name} {value!r} is not a number", path=path, case=case
            ) from exc
        if not np.isfinite(v):
            raise InputError(
                f"{_where(frame)}{name} is {value!r}, not a finite number", path=path, case=case
            )
        out.append(v)
    s, i = out
    if s == 0:
        raise InputError(
            f"{_where(frame)}RescaleSlope is 0 (every voxel would be equal)", path=path, case=case
        )
    if abs(s) > MAX_ABS_HU or abs(i) > MAX_ABS_HU:
        raise InputError(
            f"{_where(frame)}RescaleSlope {s:g} / RescaleIntercept {i:g} beyond any CT "
            f"(limit {MAX_ABS_HU:g} each); corrupt header?",
            path=path,
            case=case,
        )
    return s, i


def _check_range(plane: np.ndarray, s: SliceRef, case: str | None) -> None:
    """Rescaled values must be finite and within ``MAX_ABS_HU`` (names the slice's file)."""
    lo, hi = (float(plane.min()), float(plane.max())) if plane.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)) or max(abs(lo), abs(hi)) > MAX_ABS_HU:
        raise InputError(
            f"{_where(s.frame)}rescaled values span {lo:g}..{hi:g} HU (RescaleSlope {s.slope:g}, "
            f"RescaleIntercept {s.intercept:g}), beyond any CT (limit {MAX_ABS_HU:g})",
            path=s.path,
            case=case,
        )


def _seq_item(ds, group: str, item: str, frame_group=None):
    """Look ``item`` up in a functional group: per-frame first, then shared."""
    for src in (frame_group, ds.get("SharedFunctionalGroupsSequence", [None])[0]):
        if src is None or group not in src:
            continue
        seq = src.get(group)
        if seq and item in seq[0]:
            return seq[0].get(item)
    return None


def _iter_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            files.append(Path(root) / name)
    return files


def _check_pixel_data(ds, path: Path, case: str | None) -> NativeLayout | None:
    """Missing or truncated pixel data is found from the headers, before any decoding.

    Returns the on-disk layout of uncompressed little-endian grey pixels (so they can be read
    with one ``np.fromfile`` instead of a full parse), else None.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError("DICOM file has no pixel data", path=path, case=case)
    size = path.stat().st_size
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is not None and tsyntax.is_compressed:
        # encapsulated fragments must be closed by a Sequence Delimitation Item
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 4096))
            tail = fh.read()
        if _SEQ_DELIM not in tail:
            raise InputError(
                "encapsulated pixel data is not terminated (truncated file?)", path=path, case=case
            )
        return None
    elem = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    tell = getattr(elem, "value_tell", None)
    length = getattr(elem, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF:
        return None
    if tell + length > size:
        raise InputError(
            f"pixel data is truncated: header says {length} bytes, file holds {size - tell}",
            path=path,
            case=case,
        )
    frames = int(_num(ds.get("NumberOfFrames"), 1) or 1)
    bits = int(ds.get("BitsAllocated", 16))
    spp = int(ds.get("SamplesPerPixel", 1))
    expected = int(ds.Rows) * int(ds.Columns) * frames * spp * bits // 8
    if length < expected:
        raise InputError(
            f"pixel data has {length} bytes, {expected} expected for "
            f"{frames}x{ds.Rows}x{ds.Columns} at {bits} bits",
            path=path,
            case=case,
        )
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if str(tsyntax) not in _NATIVE_LE or spp != 1 or bits not in (8, 16, 32):
        return None
    dtype = ("<i" if signed else "<u") + str(bits // 8) if bits > 8 else ("i1" if signed else "u1")
    return NativeLayout(int(tell), dtype, int(ds.get("BitsStored", bits)), signed)


def _read_header(path: Path, case: str | None):
    """Read one file's header (pixel data deferred); None for files that are not DICOM."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, defer_size=256)
    except InvalidDicomError:
        return None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            f"unreadable DICOM file ({type(exc).__name__}: {exc})", path=path, case=case
        ) from exc
    for w in caught:
        if "End of file" in str(w.message) or "truncat" in str(w.message).lower():
            raise InputError(f"truncated DICOM file ({w.message})", path=path, case=case)
    if len(ds) == 0 and hasattr(ds, "file_meta") and "MediaStorageSOPClassUID" in ds.file_meta:
        raise InputError(
            "DICOM file has a file meta header but no data set (truncated?)", path=path, case=case
        )
    if (
        "SOPClassUID" not in ds
        and "ImagePositionPatient" not in ds
        and "PerFrameFunctionalGroupsSequence" not in ds
    ):
        return None  # DICOMDIR-like or non-image objects carry no slice
    return ds


def _header_facts(ds) -> dict:
    """Acquisition facts worth reporting; deliberately no patient identifiers."""
    kernel = ds.get("ConvolutionKernel")
    if kernel is None and "SharedFunctionalGroupsSequence" in ds:
        kernel = _seq_item(ds, "CTReconstructionSequence", "ConvolutionKernel")
    return {
        "modality": _str(ds.get("Modality")),
        "manufacturer": _str(ds.get("Manufacturer")),
        "model": _str(ds.get("ManufacturerModelName")),
        "kvp": _num(ds.get("KVP")),
        "kernel": _str(kernel),
        "series_description": _str(ds.get("SeriesDescription")),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", ""))
        if hasattr(ds, "file_meta")
        else "",
    }


def _slices_of(ds, path: Path, case: str | None) -> list[SliceRef]:
    """The frames a file contributes: one for classic images, NumberOfFrames for enhanced ones."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except AttributeError as exc:
        raise InputError("DICOM image without Rows/Columns", path=path, case=case) from exc
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None or str(ds.get("SOPClassUID", "")) == _ENHANCED_CT:
        if not per_frame:
            raise InputError(
                "enhanced multi-frame image without PerFrameFunctionalGroupsSequence",
                path=path,
                case=case,
            )
        out = []
        for i, fg in enumerate(per_frame):
            pos = _seq_item(ds, "PlanePositionSequence", "ImagePositionPatient", fg)
            iop = _seq_item(ds, "PlaneOrientationSequence", "ImageOrientationPatient", fg)
            ps = _seq_item(ds, "PixelMeasuresSequence", "PixelSpacing", fg)
            th = _seq_item(ds, "PixelMeasuresSequence", "SliceThickness", fg)
            slope = _seq_item(ds, "PixelValueTransformationSequence", "RescaleSlope", fg)
            icpt = _seq_item(ds, "PixelValueTransformationSequence", "RescaleIntercept", fg)
            if pos is None or iop is None or ps is None:
                raise InputError(
                    f"frame {i} lacks position, orientation or pixel spacing", path=path, case=case
                )
            pos, iop, ps = _geometry(pos, iop, ps, path, case, i)
            slope, icpt = _rescale(slope, icpt, path, case, i)
            out.append(
                SliceRef(
                    path,
                    i,
                    pos,
                    iop,
                    ps,
                    rows,
                    cols,
                    slope,
                    icpt,
                    _num(th),
                    pixel_format=_pixel_format(ds),
                )
            )
        return out
    pos, iop, ps = (
        ds.get("ImagePositionPatient"),
        ds.get("ImageOrientationPatient"),
        ds.get("PixelSpacing"),
    )
    if pos is None or iop is None or ps is None:
        raise InputError(
            "DICOM image lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing",
            path=path,
            case=case,
        )
    pos, iop, ps = _geometry(pos, iop, ps, path, case)
    slope, icpt = _rescale(ds.get("RescaleSlope"), ds.get("RescaleIntercept"), path, case)
    return [
        SliceRef(
            path,
            None,
            pos,
            iop,
            ps,
            rows,
            cols,
            slope,
            icpt,
            _num(ds.get("SliceThickness")),
            pixel_format=_pixel_format(ds),
        )
    ]


def discover_series(
    folder: Path, *, case: str | None = None, progress: bool = False
) -> dict[str, SeriesInfo]:
    """Read every file's header under ``folder`` and group the images by SeriesInstanceUID.

    ``folder`` may also be a single DICOM file (e.g. one enhanced multi-frame object).
    Files that are not DICOM are ignored; DICOM files that cannot be parsed, lack pixel data or
    hold truncated pixel data raise InputError naming the file, since a silently dropped slice
    would leave a hole in the volume.
    """
    folder = Path(folder)
    if folder.is_file():
        files = [folder]
    elif folder.is_dir():
        files = _iter_files(folder)
    else:
        raise InputError("DICOM folder does not exist", path=folder, case=case)
    series: dict[str, SeriesInfo] = {}
    for path in tqdm(
        files, desc="DICOM headers", unit="file", disable=not progress or len(files) < 50
    ):
        ds = _read_header(path, case)
        if ds is None:
            continue
        native = _check_pixel_data(ds, path, case)
        uid = str(ds.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"
        info = series.get(uid)
        if info is None:
            facts = _header_facts(ds)
            info = series[uid] = SeriesInfo(
                uid, facts["series_description"], facts["modality"], header=facts
            )
        info.files.append(path)
        if hasattr(ds, "file_meta"):
            info.transfer_syntaxes.add(str(ds.file_meta.get("TransferSyntaxUID", "")))
        refs = _slices_of(ds, path, case)
        if native is not None:
            frame_bytes = refs[0].rows * refs[0].cols * np.dtype(native.dtype).itemsize
            for r in refs:
                r.native = NativeLayout(
                    native.offset + (r.frame or 0) * frame_bytes,
                    native.dtype,
                    native.bits_stored,
                    native.signed,
                )
        info.multiframe |= refs[0].frame is not None
        info.slices.extend(refs)
    if not series:
        raise InputError("no DICOM image files found in folder", path=folder, case=case)
    return series


def describe_series(series: dict[str, SeriesInfo]) -> str:
    """One line per series (uid, description, number of files), for error messages."""
    return "; ".join(
        f"{s.uid} ({s.description or 'no description'}, {s.modality or '?'}, {len(s.files)} files)"
        for s in series.values()
    )


def choose_series(
    series: dict[str, SeriesInfo], folder: Path, *, series_uid: str | None, case: str | None
) -> SeriesInfo:
    """The series to use: the only one, or the one named; anything else is an error listing them."""
    if series_uid:
        if series_uid not in series:
            raise InputError(
                f"series_uid {series_uid} not in folder; found: {describe_series(series)}",
                path=folder,
                case=case,
            )
        return series[series_uid]
    if len(series) > 1:
        raise InputError(
            f"folder holds {len(series)} series and no series_uid was given; choose one of: "
            f"{describe_series(series)}",
            path=folder,
            case=case,
        )
    return next(iter(series.values()))


def _resolve_policy(ingest: dict | None, key: str) -> str:
    value = str((ingest or {}).get(key, "error"))
    if value not in {"error", "resample"}:
        raise ValueError(f"ingest.{key} must be 'error' or 'resample', not {value!r}")
    return value


def order_slices(
    info: SeriesInfo,
    *,
    case: str | None = None,
    ingest: dict | None = None,
    expected_modality: str | None = "CT",
) -> SeriesGeometry:
    """Check a series' consistency and order its slices along the slice normal.

    Raises InputError for: wrong modality, inconsistent rows/columns, orientation or pixel
    spacing, duplicate positions, and (unless ``ingest`` says ``resample``) gantry tilt,
    missing slices and uneven spacing. Thickness different from spacing is only a warning.
    """
    slices = info.slices
    first = slices[0]
    if expected_modality and info.modality and info.modality.upper() != expected_modality.upper():
        raise InputError(
            f"series {info.uid} has modality {info.modality}, expected {expected_modality}",
            path=first.path,
            case=case,
        )
    for s in slices[1:]:
        if s.pixel_format != first.pixel_format:
            diff = [
                f"{k} {a or '-'} here, {b or '-'} in {first.path.name}"
                for k, a, b in zip(_PIXEL_FORMAT, s.pixel_format, first.pixel_format, strict=True)
                if a != b
            ]
            raise InputError(
                "pixel format differs within the series: " + "; ".join(diff),
                path=s.path,
                case=case,
            )
        if (s.rows, s.cols) != (first.rows, first.cols):
            raise InputError(
                f"inconsistent image size: {s.rows}x{s.cols} here, {first.rows}x{first.cols} in {first.path.name}",
                path=s.path,
                case=case,
            )
        if not np.allclose(s.orientation, first.orientation, atol=COS_TOL):
            raise InputError(
                "ImageOrientationPatient differs within the series", path=s.path, case=case
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise InputError("PixelSpacing differs within the series", path=s.path, case=case)
    row = first.orientation[:3] / np.linalg.norm(first.orientation[:3])
    col = first.orientation[3:] / np.linalg.norm(first.orientation[3:])
    normal = np.cross(row, col)
    offsets = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(offsets, kind="stable")
    slices = [slices[i] for i in order]
    offsets = offsets[order]
    warnings: list[str] = []
    direction = np.column_stack([row, col, normal])
    spacing_xy = (first.pixel_spacing[1], first.pixel_spacing[0])
    if len(slices) == 1:
        z = first.thickness or 1.0
        return SeriesGeometry(
            slices,
            first.position.copy(),
            direction,
            np.array([*spacing_xy, z]),
            offsets,
            normal * z,
            warnings,
            0.0,
            False,
            0,
        )
    gaps = np.diff(offsets)
    dup = np.nonzero(gaps < DUPLICATE_TOL_MM)[0]
    if dup.size:
        a, b = slices[dup[0]], slices[dup[0] + 1]
        raise InputError(
            f"duplicate slice position {np.round(a.position, 3).tolist()} "
            f"(also in {b.path.name}{'' if b.frame is None else f' frame {b.frame}'})",
            path=a.path,
            case=case,
        )
    positions = np.array([s.position for s in slices])
    step = (positions[-1] - positions[0]) / (len(slices) - 1)
    cos_tilt = float(np.clip(abs(step @ normal) / np.linalg.norm(step), 0, 1))
    tilt_deg = float(np.degrees(np.arccos(cos_tilt)))
    if tilt_deg > TILT_TOL_DEG:
        msg = f"gantry tilt / sheared stack: slices advance {tilt_deg:.2f} deg off the slice normal"
        if _resolve_policy(ingest, "gantry_tilt") == "error":
            raise InputError(
                msg + " (set ingest.gantry_tilt: resample to accept)", path=first.path, case=case
            )
        warnings.append(msg + "; resampled onto an orthogonal grid")
    median = float(np.median(gaps))
    rel = np.abs(gaps - median) / median
    uneven = bool(np.any(rel > GAP_REL_TOL))
    missing = int(sum(max(0, round(g / median) - 1) for g in gaps if g > 1.5 * median))
    if uneven:
        where = int(np.argmax(rel))
        msg = (
            f"uneven slice spacing: gaps {gaps.min():.3f}-{gaps.max():.3f} mm (median {median:.3f})"
            + (
                f", about {missing} missing slice(s) after {slices[where].path.name}"
                if missing
                else ""
            )
        )
        if _resolve_policy(ingest, "uneven_spacing") == "error":
            raise InputError(
                msg + " (set ingest.uneven_spacing: resample to accept)",
                path=slices[where].path,
                case=case,
            )
        warnings.append(msg + "; resampled to even spacing")
    z_spacing = median if uneven else float((offsets[-1] - offsets[0]) / (len(slices) - 1))
    thick = first.thickness
    if thick is not None and abs(thick - z_spacing) > 0.01 * z_spacing + 1e-3:
        warnings.append(f"slice thickness {thick:g} mm differs from slice spacing {z_spacing:g} mm")
    return SeriesGeometry(
        slices,
        slices[0].position.copy(),
        direction,
        np.array([*spacing_xy, z_spacing]),
        offsets,
        step,
        warnings,
        tilt_deg,
        uneven,
        missing,
    )


def _decode_pydicom(geom: SeriesGeometry, case: str | None, progress: bool) -> np.ndarray:
    """Decode every frame with pydicom and apply each frame's own slope/intercept (float32)."""
    out = np.empty((len(geom.slices), geom.slices[0].rows, geom.slices[0].cols), np.float32)
    cache: dict[Path, np.ndarray] = {}
    for k, s in enumerate(tqdm(geom.slices, desc="decode", unit="slice", disable=not progress)):
        arr = cache.get(s.path)
        if arr is None:
            try:
                ds = pydicom.dcmread(s.path)
                arr = ds.pixel_array
            except Exception as exc:  # pydicom raises many types for broken pixel data
                raise InputError(
                    f"cannot decode pixel data ({type(exc).__name__}: {exc})",
                    path=s.path,
                    case=case,
                ) from exc
            if s.frame is not None:
                cache = {s.path: arr}
        frame = arr[s.frame] if s.frame is not None and arr.ndim == 3 else arr
        if frame.shape != (s.rows, s.cols):
            raise InputError(
                f"decoded frame has shape {frame.shape}, header says {(s.rows, s.cols)}",
                path=s.path,
                case=case,
            )
        out[k] = frame.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
        _check_range(out[k], s, case)
    return out


def _decode_native(geom: SeriesGeometry, case: str | None, progress: bool) -> np.ndarray:
    """Read uncompressed pixels straight from disk and rescale per slice.

    Integral slopes/intercepts are applied in int32 (exact); others in float32. High bits beyond
    BitsStored are masked (unsigned) or sign-extended (signed), as the standard requires.
    """
    s0 = geom.slices[0]
    # exact int32 arithmetic only when no stored value can overflow it
    integral = all(
        float(s.slope).is_integer()
        and float(s.intercept).is_integer()
        and abs(s.slope) * 2.0 ** (8 * np.dtype(s.native.dtype).itemsize) + abs(s.intercept)
        < 2.0**31
        for s in geom.slices
    )
    out = np.empty((len(geom.slices), s0.rows, s0.cols), np.int32 if integral else np.float32)
    count = s0.rows * s0.cols
    for k, s in enumerate(tqdm(geom.slices, desc="read", unit="slice", disable=not progress)):
        lay = s.native
        try:
            words = np.fromfile(s.path, dtype=lay.dtype, count=count, offset=lay.offset)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read pixel data ({exc})", path=s.path, case=case) from exc
        if words.size != count:
            raise InputError(
                f"pixel data holds {words.size} of {count} pixels", path=s.path, case=case
            )
        bits = words.dtype.itemsize * 8
        if lay.bits_stored < bits:
            shift = bits - lay.bits_stored
            if lay.signed:
                words = (words << shift) >> shift
            else:
                words = words & ((1 << lay.bits_stored) - 1)
        plane = words.reshape(s0.rows, s0.cols)
        if integral:
            out[k] = plane.astype(np.int32) * int(s.slope) + int(s.intercept)
        else:
            out[k] = plane.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
        _check_range(out[k], s, case)
    return out


def _decode_sitk(geom: SeriesGeometry) -> sitk.Image | None:
    """Compressed homogeneous single-frame series: GDCM decodes and rescales (in our order).

    The image stays in SimpleITK (no numpy round trip); integer results that fit become int16,
    anything else float32. None when GDCM fails, so pydicom can name the bad file.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(s.path) for s in geom.slices])
    try:
        img = reader.Execute()
    except RuntimeError:
        return None
    if img.GetSize() != (geom.slices[0].cols, geom.slices[0].rows, len(geom.slices)):
        return None
    mm = sitk.MinimumMaximumImageFilter()
    mm.Execute(img)
    if not (abs(mm.GetMinimum()) <= MAX_ABS_HU and abs(mm.GetMaximum()) <= MAX_ABS_HU):
        return None  # let pydicom decode slice by slice and name the bad file
    if img.GetPixelID() in (sitk.sitkInt16, sitk.sitkFloat32):
        return img
    if img.GetPixelID() in (sitk.sitkFloat64,):
        return sitk.Cast(img, sitk.sitkFloat32)
    if -32768 <= mm.GetMinimum() and mm.GetMaximum() <= 32767:
        return sitk.Cast(img, sitk.sitkInt16)
    return sitk.Cast(img, sitk.sitkFloat32)


def _fast_path_ok(info: SeriesInfo, geom: SeriesGeometry) -> bool:
    if info.multiframe:
        return False
    s0 = geom.slices[0]
    return all(s.slope == s0.slope and s.intercept == s0.intercept for s in geom.slices)


def _resample_stack(hu: np.ndarray, geom: SeriesGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Linear resampling of a tilted and/or unevenly spaced stack onto an orthogonal even grid.

    Output slice k lies at offset ``offsets[0] + k * dz`` along the normal. Its in-plane content
    comes from the acquired slices around it, each shifted by the in-plane part of its position
    (so a tilted stack is de-sheared) and blended linearly along the normal.
    """
    hu = hu.astype(np.float32, copy=False)
    row, col, normal = geom.direction.T
    sx, sy, dz = geom.spacing
    p0 = geom.slices[0].position
    n_out = int(np.floor((geom.offsets[-1] - geom.offsets[0]) / dz + 1e-6)) + 1
    # in-plane shift of each acquired slice relative to the first one (voxels, y then x)
    rel = np.array([s.position - p0 for s in geom.slices])
    shift_xy = np.stack([rel @ col / sy, rel @ row / sx], axis=1)
    sheared = np.any(np.abs(shift_xy) > 1e-3)
    out = np.empty((n_out, hu.shape[1], hu.shape[2]), np.float32)
    targets = geom.offsets[0] + np.arange(n_out) * dz
    for k, t in enumerate(targets):
        j = int(
            np.clip(np.searchsorted(geom.offsets, t, side="right") - 1, 0, len(geom.offsets) - 2)
        )
        w = float(np.clip((t - geom.offsets[j]) / (geom.offsets[j + 1] - geom.offsets[j]), 0, 1))
        acc = np.zeros(hu.shape[1:], np.float32)
        for idx, weight in ((j, 1 - w), (j + 1, w)):
            if weight == 0:
                continue
            plane = hu[idx]
            if sheared:
                # content at voxel v of slice idx sits at v + shift in the output plane
                plane = ndimage.shift(plane, shift_xy[idx], order=1, mode="nearest")
            acc += np.float32(weight) * plane
        out[k] = acc
    return out, np.array([sx, sy, dz])


def read_dicom_series(
    folder: Path,
    *,
    case: str | None = None,
    series_uid: str | None = None,
    ingest: dict | None = None,
    expected_modality: str | None = "CT",
    progress: bool = True,
) -> tuple[sitk.Image, dict]:
    """Read one CT series (a folder, or one file) as an HU image + metadata.

    The image is int16 when every value is an exact integer in range, else float32; its
    geometry follows ``order_slices``. Pixels are read straight from disk for uncompressed
    little-endian data, by GDCM for homogeneous compressed series, by pydicom otherwise.
    """
    folder = Path(folder)
    series = discover_series(folder, case=case, progress=progress)
    info = choose_series(series, folder, series_uid=series_uid, case=case)
    geom = order_slices(info, case=case, ingest=ingest, expected_modality=expected_modality)
    s0 = geom.slices[0]
    check_voxels((s0.cols, s0.rows, len(geom.slices)), s0.path, case=case, ingest=ingest)
    hu = img = None
    resample = geom.uneven or geom.tilt_deg > TILT_TOL_DEG
    if all(s.native is not None for s in geom.slices):
        hu = _decode_native(geom, case, progress)
    elif _fast_path_ok(info, geom):
        img = _decode_sitk(geom)
        if img is not None and resample:
            hu, img = sitk.GetArrayFromImage(img), None
    if hu is None and img is None:
        hu = _decode_pydicom(geom, case, progress)
    spacing = geom.spacing
    for key in img.GetMetaDataKeys() if img is not None else ():
        img.EraseMetaData(key)  # GDCM may attach header fields; identifiers must not travel on
    if img is None:
        if resample:
            hu, spacing = _resample_stack(hu, geom)
        img = _to_image(hu, [s.slope for s in geom.slices], [s.intercept for s in geom.slices])
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetOrigin(tuple(float(v) for v in geom.origin))
    img.SetDirection(tuple(float(v) for v in geom.direction.ravel()))
    meta = dict(info.header)
    meta.update(
        source_kind="dicom",
        series_uid=info.uid,
        n_files=len(info.files),
        n_slices=int(img.GetSize()[2]),
        n_slices_acquired=len(geom.slices),
        rows=geom.slices[0].rows,
        cols=geom.slices[0].cols,
        slice_spacing_mm=float(spacing[2]),
        slice_thickness_mm=geom.slices[0].thickness,
        gantry_tilt_deg=round(geom.tilt_deg, 4),
        missing_slices=geom.missing,
        multiframe=info.multiframe,
        transfer_syntaxes=sorted(info.transfer_syntaxes),
        warnings=list(geom.warnings),
    )
    meta["transfer_syntax"] = (
        meta["transfer_syntaxes"][0] if len(meta["transfer_syntaxes"]) == 1 else "mixed"
    )
    return img, meta


def _to_image(hu: np.ndarray, slopes: Iterable[float], intercepts: Iterable[float]) -> sitk.Image:
    """int16 when every slope and intercept is integral and the range fits, else float32."""
    integral = all(float(v).is_integer() for v in [*slopes, *intercepts])
    if integral:
        lo, hi = (float(hu.min()), float(hu.max())) if hu.size else (0.0, 0.0)
        exact = hu.dtype.kind in "iu" or np.array_equal(hu, np.round(hu))
        if -32768 <= lo and hi <= 32767 and exact:
            return sitk.GetImageFromArray(hu.astype(np.int16, copy=False))
    return sitk.GetImageFromArray(hu.astype(np.float32))
