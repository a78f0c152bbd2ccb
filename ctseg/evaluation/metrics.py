"""Overlap and surface-distance metrics of a segmentation against its truth.

Definitions are exactly those of ``medpy.metric.binary`` (0.5.2) with ``connectivity=1`` so
that numbers can be compared with the literature (seed 003 reports medpy's values):

- surface of a mask = mask XOR its binary erosion with the connectivity-1 structure; the
  erosion treats everything outside the array as background (``border_value=0``), so voxels on
  the array border are surface voxels;
- directed surface distances from A to B = Euclidean distance transform (``sampling`` = voxel
  spacing) of NOT surface(B), read at the surface voxels of A;
- ``asd(pred, truth)`` = mean of the directed distances pred -> truth; ``assd`` = mean of the
  concatenation of both directed sets; ``hd95`` = ``np.percentile(np.hstack((d_pt, d_tp)), 95)``.

Why this is much faster than medpy while giving the same values: all work for one label is done
inside the bounding box of the union of the two structures, padded by one voxel (clipped at the
array border). Inside that box the erosion is exact (the padding is background, and where the box
meets the array border the border semantics are the same), and the distance transform is exact
too, because every surface voxel of either structure lies inside the box, so the nearest surface
voxel of the other structure is always found there. Each surface is computed once and shared by
ASD, ASSD and HD95, and the boxes of every label come from one ``scipy.ndimage.find_objects``
pass over each label map instead of one full-volume comparison per label.

Spacing is given in *array axis order*: for arrays from ``sitk.GetArrayFromImage`` (indexed
``[z, y, x]``) that is ``image.GetSpacing()[::-1]``.

Empty structures (policy):

- both empty: the label is not reported at all by :func:`label_metrics` (:func:`binary_metrics`
  returns a row of NaN with ``empty = "both"``);
- exactly one empty: Dice = Jaccard = 0; the surface distances (ASD, ASSD, HD95) are NaN and the
  column ``empty`` says which side is empty (``"pred"`` or ``"truth"``); precision is NaN when the
  prediction is empty (no predicted voxel to be right or wrong about) and 0 when the truth is
  empty; recall the other way round. Nothing raises and nothing is silently 0 for distances.
- otherwise ``empty`` is the empty string.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ctseg.core import tsvio
from ctseg.core.errors import InputError
from ctseg.core.grid import check_same_grid as check_same_grid  # re-exported

#: Column order of a metrics row (after any identifying columns such as case / label / name).
METRIC_KEYS: tuple[str, ...] = (
    "dice",
    "jaccard",
    "asd_mm",
    "assd_mm",
    "hd95_mm",
    "precision",
    "recall",
    "vol_pred_mm3",
    "vol_truth_mm3",
    "vol_diff_mm3",
    "vol_diff_rel",
    "empty",
)

NAN = float("nan")


def _spacing_array(spacing: Sequence[float], ndim: int) -> np.ndarray:
    sp = np.asarray(spacing, dtype=np.float64).ravel()
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {sp.size} values for a {ndim}-D array")
    if np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise ValueError(f"spacing must be positive and finite, got {tuple(spacing)}")
    return np.ascontiguousarray(sp)


def _union_box(
    a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape: tuple[int, ...]
) -> tuple[slice, ...]:
    """Union of two bounding boxes, padded by one voxel and clipped to the array."""
    boxes = [s for s in (a, b) if s is not None]
    lo = [min(s[d].start for s in boxes) for d in range(len(shape))]
    hi = [max(s[d].stop for s in boxes) for d in range(len(shape))]
    return tuple(slice(max(0, lo[d] - 1), min(shape[d], hi[d] + 1)) for d in range(len(shape)))


def _surface(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    # border_value=0 as in medpy: voxels on the array border count as surface.
    return mask ^ ndimage.binary_erosion(mask, structure=footprint, iterations=1)


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (pred -> truth, truth -> pred) of two non-empty masks.

    The masks should already be cropped to their union box padded by one voxel (or be whole
    arrays); see the module docstring for why that crop gives medpy's exact values.
    """
    footprint = ndimage.generate_binary_structure(pred.ndim, 1)
    sp = _surface(pred, footprint)
    st = _surface(truth, footprint)
    d_pt = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]
    d_tp = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
    return d_pt, d_tp


def _metrics_in_box(p: np.ndarray, t: np.ndarray, sp: np.ndarray) -> dict:
    """All metrics of two boolean masks (already cropped to their padded union box)."""
    voxel_mm3 = float(np.prod(sp))
    n_p = int(np.count_nonzero(p))
    n_t = int(np.count_nonzero(t))
    inter = int(np.count_nonzero(p & t))
    row: dict = {}
    if n_p == 0 and n_t == 0:
        row.update({k: NAN for k in METRIC_KEYS})
        row.update(vol_pred_mm3=0.0, vol_truth_mm3=0.0, vol_diff_mm3=0.0, empty="both")
        return row
    union = n_p + n_t - inter
    row["dice"] = 2.0 * inter / float(n_p + n_t)
    row["jaccard"] = inter / float(union)
    if n_p and n_t:
        d_pt, d_tp = surface_distances(p, t, sp)
        row["asd_mm"] = float(d_pt.mean())
        row["assd_mm"] = float(np.concatenate([d_pt, d_tp]).mean())
        row["hd95_mm"] = float(np.percentile(np.hstack((d_pt, d_tp)), 95))
        empty = ""
    else:
        row["asd_mm"] = row["assd_mm"] = row["hd95_mm"] = NAN
        empty = "pred" if n_p == 0 else "truth"
    row["precision"] = inter / float(n_p) if n_p else NAN
    row["recall"] = inter / float(n_t) if n_t else NAN
    row["vol_pred_mm3"] = n_p * voxel_mm3
    row["vol_truth_mm3"] = n_t * voxel_mm3
    row["vol_diff_mm3"] = (n_p - n_t) * voxel_mm3
    row["vol_diff_rel"] = (n_p - n_t) / float(n_t) if n_t else NAN
    row["empty"] = empty
    return row


def binary_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict:
    """All metrics of two binary masks (non-zero = object) of the same shape.

    ``spacing`` is in array axis order ((z, y, x) for sitk arrays). Returns a dict with the keys
    of :data:`METRIC_KEYS`; see the module docstring for the empty-structure policy.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs truth {truth.shape}")
    sp = _spacing_array(spacing, pred.ndim)
    p = pred.astype(bool, copy=False)
    t = truth.astype(bool, copy=False)
    box_p = ndimage.find_objects(p.astype(np.uint8), max_label=1)[0]
    box_t = ndimage.find_objects(t.astype(np.uint8), max_label=1)[0]
    if box_p is None and box_t is None:
        return _metrics_in_box(p[:0], t[:0], sp)
    box = _union_box(box_p, box_t, p.shape)
    return _metrics_in_box(p[box], t[box], sp)


def _as_label_array(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{what} label map has non-integer values".strip())
        a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"{what} label map has negative labels".strip())
    return a


def label_array(img: sitk.Image, path: str | Path, *, case: str | None = None) -> np.ndarray:
    """The voxels of a label map file, checked: non-negative integer ids, else an InputError
    naming the file (a float or negative "label map" is usually a CT or a probability map
    given by mistake)."""
    arr = sitk.GetArrayFromImage(img)
    try:
        return _as_label_array(arr, "")
    except ValueError as exc:
        raise InputError(
            f"not a label map: {str(exc).strip()} (pixel type {arr.dtype})", path=path, case=case
        ) from exc


def label_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    labels: Iterable[int] | None = None,
) -> list[dict]:
    """Metrics per label of two label maps (0 = background), one dict per reported label.

    A label is reported when it is present in either map (and, if ``labels`` is given, is in
    that list); labels absent from both are not reported. Rows are sorted by label and carry
    ``label`` followed by the keys of :data:`METRIC_KEYS`.
    """
    pred = _as_label_array(pred, "pred")
    truth = _as_label_array(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs truth {truth.shape}")
    sp = _spacing_array(spacing, pred.ndim)
    pred, truth, ids = _compact_ids(pred, truth)
    # One pass per map for the boxes of all labels at once.
    boxes_p = ndimage.find_objects(pred) if pred.size else []
    boxes_t = ndimage.find_objects(truth) if truth.size else []
    present = {i + 1 for i, b in enumerate(boxes_p) if b is not None}
    present |= {i + 1 for i, b in enumerate(boxes_t) if b is not None}
    wanted_ids = None if labels is None else {int(x) for x in labels}
    rows = []
    for lab in sorted(present):
        label_id = int(ids[lab]) if ids is not None else lab
        if wanted_ids is not None and label_id not in wanted_ids:
            continue
        bp = boxes_p[lab - 1] if lab <= len(boxes_p) else None
        bt = boxes_t[lab - 1] if lab <= len(boxes_t) else None
        box = _union_box(bp, bt, pred.shape)
        row = {"label": label_id}
        row.update(_metrics_in_box(pred[box] == lab, truth[box] == lab, sp))
        rows.append(row)
    return rows


#: Largest label id used directly as an index (``find_objects`` allocates one entry per id).
_DIRECT_MAX = 65535


def _compact_ids(
    pred: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Label maps whose ids index per-label work directly, plus the original ids.

    Per-label work must scale with the ids *present*, not with the largest id: one voxel of id
    2e9 would otherwise allocate billions of entries. Small ids (the usual case) are used as
    they are (``ids`` is None); otherwise the ids present are renumbered 1..n (``ids[k]`` is the
    original id of compact id k, 0 stays 0).
    """
    top = max(int(pred.max()) if pred.size else 0, int(truth.max()) if truth.size else 0)
    if top <= _DIRECT_MAX:
        return pred, truth, None
    ids = np.union1d(np.unique(pred), np.unique(truth))
    if ids[0] != 0:
        ids = np.concatenate([[0], ids])
    dtype = np.int32 if ids.size < 2**31 else np.int64
    return (
        np.searchsorted(ids, pred).astype(dtype),
        np.searchsorted(ids, truth).astype(dtype),
        ids,
    )


# --------------------------------------------------------------------------------------------
# Image I/O helpers shared by the CLI and ctseg.evaluation.evaluate
# --------------------------------------------------------------------------------------------


def array_spacing(img: sitk.Image) -> tuple[float, ...]:
    """Voxel spacing in numpy array axis order (reverse of SimpleITK's x, y, z order)."""
    return tuple(float(s) for s in reversed(img.GetSpacing()))


def format_value(v: object) -> str:
    """TSV cell text: floats in full precision (repr), NaN as ``NaN``, bools as true/false."""
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, float | np.floating):
        f = float(v)
        return "NaN" if math.isnan(f) else repr(f)
    if v is None:
        return ""
    return str(v)


def write_tsv(rows: Iterable[dict], columns: Sequence[str], out_tsv: str | Path) -> None:
    """Write rows (dicts) as a TSV with the given columns, atomically."""
    tsvio.write_tsv(out_tsv, columns, rows, cell=format_value)
