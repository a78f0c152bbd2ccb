"""Summary statistics of a raw scan (seed 002's DICOM statistics), free of patient identifiers.

The summary is computed from the very image ``ctseg.ingest.volume.read_image`` returns, so it
describes the voxels every later stage sees. Header facts come from a whitelist
(``STAT_KEYS``): nothing else from the DICOM header can reach the JSON, so names, IDs, birth
dates and accession numbers never leave ``raw/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.errors import InputError
from ctseg.core.tsvio import write_tsv
from ctseg.ingest.volume import find_raw_source, read_image

#: The keys of a summary, in table column order.
STAT_KEYS = (
    "case",
    "source_kind",
    "modality",
    "manufacturer",
    "model",
    "kvp",
    "kernel",
    "n_slices",
    "rows",
    "cols",
    "spacing_mm",
    "slice_spacing_mm",
    "slice_thickness_mm",
    "hu_min",
    "hu_max",
    "hu_mean",
    "hu_std",
    "center_mm",
    "bbox_mm",
    "orientation",
    "warnings",
)


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def image_geometry(img: sitk.Image) -> dict:
    """Centre, bounding box and orientation code of an image in world (LPS) mm.

    ``center_mm`` is the continuous index ``(size - 1) / 2`` mapped to world, i.e. the centre of
    the voxel-centre lattice. ``bbox_mm`` is ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` over the
    eight outer voxel corners (index -0.5 and size - 0.5): the region the scan covers.
    """
    size = np.array(img.GetSize(), float)
    center = img.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist())
    corners = [
        img.TransformContinuousIndexToPhysicalPoint([a, b, c])
        for a in (-0.5, size[0] - 0.5)
        for b in (-0.5, size[1] - 0.5)
        for c in (-0.5, size[2] - 0.5)
    ]
    corners = np.array(corners)
    orient = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())
    return {
        "center_mm": [float(v) for v in center],
        "bbox_mm": [corners.min(axis=0).tolist(), corners.max(axis=0).tolist()],
        "orientation": orient,
    }


#: Voxels per slab of the streamed reductions (bounds their float64 scratch memory to 8 MB).
SLAB_VOXELS = 1 << 20


def hu_statistics(arr: np.ndarray) -> dict:
    """min, max, mean and (population) std of an array, streamed over slabs of the first axis.

    No float64 copy of the whole volume is made: an int16 CT is reduced slab by slab (sums in
    float64, the std from a second pass around the mean, which is as exact as ``np.std``).
    """
    if arr.size == 0:
        return {"hu_min": None, "hu_max": None, "hu_mean": None, "hu_std": None}
    flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(1, -1)
    step = max(1, SLAB_VOXELS // max(1, flat.shape[1]))
    lo, hi, total = np.inf, -np.inf, 0.0
    for z in range(0, flat.shape[0], step):
        slab = flat[z : z + step]
        lo = min(lo, float(slab.min()))
        hi = max(hi, float(slab.max()))
        total += float(slab.sum(dtype=np.float64))
    mean = total / arr.size
    sq = 0.0
    for z in range(0, flat.shape[0], step):
        d = flat[z : z + step].astype(np.float64) - mean
        sq += float(np.dot(d.ravel(), d.ravel()))
    return {"hu_min": lo, "hu_max": hi, "hu_mean": mean, "hu_std": (sq / arr.size) ** 0.5}


def summarize_image(img: sitk.Image, meta: dict, *, case: str) -> dict:
    """The summary of an already-read image: header facts + HU statistics + geometry."""
    arr = sitk.GetArrayViewFromImage(img)
    geo = image_geometry(img)
    size = img.GetSize()
    out = {
        "case": case,
        "source_kind": meta.get("source_kind", ""),
        "modality": meta.get("modality", ""),
        "manufacturer": meta.get("manufacturer", ""),
        "model": meta.get("model", ""),
        "kvp": meta.get("kvp"),
        "kernel": meta.get("kernel", ""),
        "n_slices": int(size[2]),
        "rows": int(size[1]),
        "cols": int(size[0]),
        "spacing_mm": [float(v) for v in img.GetSpacing()],
        "slice_spacing_mm": float(img.GetSpacing()[2]),
        "slice_thickness_mm": meta.get("slice_thickness_mm"),
        **hu_statistics(arr),
        **geo,
        "warnings": list(meta.get("warnings", [])),
    }
    return {k: _clean(out[k]) for k in STAT_KEYS}


def summarize_path(path: Path, *, case: str | None = None, ingest: dict | None = None) -> dict:
    """Summary of a DICOM folder / NIfTI / NRRD; the case id defaults to the file name."""
    path = Path(path)
    case = case or path.name.split(".")[0]
    img, meta = read_image(path, case=case, ingest=ingest, progress=False)
    return summarize_image(img, meta, case=case)


def summarize_raw(raw_dir: Path, *, case: str, ingest: dict) -> dict:
    """Summary of a fetched raw case (its single image source), JSON-able."""
    src = find_raw_source(Path(raw_dir), case=case)
    return summarize_path(src, case=case, ingest=ingest)


def _flat(summary: dict) -> dict:
    """One TSV row: vectors split into _x/_y/_z columns, warnings joined with ' | '."""
    row = {}
    for key in STAT_KEYS:
        value = summary.get(key)
        if key in ("spacing_mm", "center_mm"):
            base = key[: -len("_mm")]
            for axis, v in zip("xyz", value or [None] * 3, strict=True):
                row[f"{base}_{axis}_mm"] = v
        elif key == "bbox_mm":
            lo, hi = value or ([None] * 3, [None] * 3)
            for axis, a, b in zip("xyz", lo, hi, strict=True):
                row[f"bbox_{axis}_min_mm"] = a
                row[f"bbox_{axis}_max_mm"] = b
        elif key == "warnings":
            row[key] = " | ".join(value or [])
        else:
            row[key] = value
    return row


def summary_columns() -> list[str]:
    """Stable column order of the summary table."""
    return list(_flat({k: None for k in STAT_KEYS}))


def write_summary_table(json_paths: list[Path], out_tsv: Path) -> None:
    """One row per case (sorted by case id), stable columns; missing values are empty cells."""
    rows = []
    for p in json_paths:
        try:
            rows.append(_flat(json.loads(Path(p).read_text())))
        except (ValueError, OSError) as exc:
            raise InputError(f"unreadable summary JSON ({exc})", path=p) from exc
    rows.sort(key=lambda r: str(r.get("case")))
    write_tsv(out_tsv, summary_columns(), rows)
