"""Per-vertebra statistics of a segmentation: size, density, position, and whether it is cut.

What a user of TotalSegmentator's ``--statistics`` expects (volume, mean intensity per
structure) and what a spine reader needs beyond it: median HU, the level's height along the
spine, its centroid and bounding box in world LPS mm, whether the field of view cuts it (then
its volume and height are lower bounds) and, given a metal mask, how much implant lies in it.

The spine direction at a level is the line through its neighbours' centroids (previous and next
present level), falling back to the patient's superior axis for a lone level. Height is the
extent of the level's voxels along that direction, voxel size included.

The vertebral body has no label of its own, so its HU are taken over the level's voxels in the
anterior :data:`BODY_FRACTION` of the level's extent along the patient's anterior axis (LPS
-y): the body is 35-45 % of a vertebra's antero-posterior depth from C3 to L5 (the canal and
the arch with its spinous process make up the rest). An approximation, labelled as such
(``body_hu_*``), for opportunistic bone-density reading (L1 body HU).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ctseg.core.atomic import write_text
from ctseg.core.labels import VERSE_NAMES, spine_rank
from ctseg.core.tsvio import write_tsv
from ctseg.formats.grid import axcodes, direction_matrix, index_to_world, label_array

_FACE_WORD = {
    "L": "left",
    "R": "right",
    "P": "posterior",
    "A": "anterior",
    "S": "superior",
    "I": "inferior",
}
_OPP = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}

#: Anterior share of a level's antero-posterior extent taken as its vertebral body.
BODY_FRACTION = 0.4


def _faces(img: sitk.Image) -> list[tuple[str, str]]:
    """(min-face word, max-face word) per index axis, e.g. ("inferior", "superior")."""
    try:
        codes = axcodes(img)
    except ValueError:
        return [(f"axis{a}-", f"axis{a}+") for a in range(3)]
    return [(_FACE_WORD[_OPP[c]], _FACE_WORD[c]) for c in codes]


def vertebra_statistics(
    labels: sitk.Image,
    ct: sitk.Image | None = None,
    *,
    metal: sitk.Image | None = None,
) -> dict:
    """Statistics of every vertebra in ``labels`` (VerSe ids) on the grid of ``ct``.

    Returns ``{"voxel_volume_mm3", "levels": [row, ...] in spine order, "metal": summary or
    None}``; each row holds label, name, voxels, volume_mm3, volume_ml, hu_mean, hu_median,
    hu_std, body_hu_mean, body_hu_median (None without ``ct``), centroid (world mm), bbox_index_min/max, bbox_world_min/max
    (world extent of the box's voxel centres), height_mm, touches_fov_edge, fov_edges (the
    faces it touches, e.g. ["inferior"]) and, with ``metal``, metal_voxels and metal_ml.
    """
    arr = label_array(labels)
    hu = None
    if ct is not None:
        if ct.GetSize() != labels.GetSize():
            raise ValueError(f"CT size {ct.GetSize()} differs from labels size {labels.GetSize()}")
        hu = sitk.GetArrayViewFromImage(ct)
    metal_arr = sitk.GetArrayViewFromImage(metal) > 0 if metal is not None else None
    spacing = np.asarray(labels.GetSpacing(), dtype=np.float64)
    voxel_mm3 = float(np.prod(spacing))
    steps = direction_matrix(labels) * spacing  # column a: one voxel step along index axis a
    size = np.asarray(labels.GetSize())
    faces = _faces(labels)

    boxes = ndimage.find_objects(arr) if arr.size else []
    present = sorted((i + 1 for i, b in enumerate(boxes) if b is not None), key=spine_rank)
    rows = []
    coords: dict[int, np.ndarray] = {}
    for label in present:
        sl = boxes[label - 1]
        mask = arr[sl] == label
        kk, jj, ii = np.nonzero(mask)
        idx = np.stack([ii + sl[2].start, jj + sl[1].start, kk + sl[0].start], axis=1)
        coords[label] = idx
        n = int(len(idx))
        lo = idx.min(axis=0)
        hi = idx.max(axis=0)
        corners = np.array(
            [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        cw = index_to_world(labels, corners)
        edges = [faces[a][0] for a in range(3) if lo[a] == 0] + [
            faces[a][1] for a in range(3) if hi[a] == size[a] - 1
        ]
        row = {
            "label": int(label),
            "name": VERSE_NAMES.get(int(label), str(int(label))),
            "voxels": n,
            "volume_mm3": n * voxel_mm3,
            "volume_ml": n * voxel_mm3 / 1000.0,
            "hu_mean": None,
            "hu_median": None,
            "hu_std": None,
            "body_hu_mean": None,
            "body_hu_median": None,
            "centroid": index_to_world(labels, idx.mean(axis=0)).tolist(),
            "bbox_index_min": lo.tolist(),
            "bbox_index_max": hi.tolist(),
            "bbox_world_min": cw.min(axis=0).tolist(),
            "bbox_world_max": cw.max(axis=0).tolist(),
            "height_mm": None,
            "touches_fov_edge": bool(edges),
            "fov_edges": edges,
        }
        if hu is not None:
            values = np.asarray(hu[sl][mask], dtype=np.float64)
            anterior = -index_to_world(labels, idx)[:, 1]  # LPS y runs posterior
            front = anterior.max()
            body = anterior >= front - BODY_FRACTION * (front - anterior.min())
            row.update(
                hu_mean=float(values.mean()),
                hu_median=float(np.median(values)),
                hu_std=float(values.std()),
                body_hu_mean=float(values[body].mean()),
                body_hu_median=float(np.median(values[body])),
            )
        if metal_arr is not None:
            m = int(np.count_nonzero(metal_arr[sl][mask]))
            row.update(metal_voxels=m, metal_ml=m * voxel_mm3 / 1000.0)
        rows.append(row)

    for n, row in enumerate(rows):
        prev_c = np.asarray(rows[n - 1]["centroid"]) if n > 0 else None
        next_c = np.asarray(rows[n + 1]["centroid"]) if n + 1 < len(rows) else None
        here = np.asarray(row["centroid"])
        if prev_c is not None or next_c is not None:
            a = prev_c if prev_c is not None else here
            b = next_c if next_c is not None else here
            t = a - b  # cranial direction
        else:
            t = np.array([0.0, 0.0, 1.0])
        norm = np.linalg.norm(t)
        t = t / norm if norm > 0 else np.array([0.0, 0.0, 1.0])
        proj = index_to_world(labels, coords[row["label"]]) @ t
        voxel_extent = float(np.abs(t @ steps).sum())
        row["height_mm"] = float(proj.max() - proj.min() + voxel_extent)

    summary = None
    if metal_arr is not None:
        total = int(np.count_nonzero(metal_arr))
        summary = {
            "metal_voxels": total,
            "metal_ml": total * voxel_mm3 / 1000.0,
            "levels_with_metal": [r["name"] for r in rows if r.get("metal_voxels", 0) > 0],
        }
    return {"voxel_volume_mm3": voxel_mm3, "levels": rows, "metal": summary}


def totalseg_style(stats: dict) -> dict:
    """The TotalSegmentator ``--statistics`` shape: {name: {"volume": mm3, "intensity": HU}}."""
    return {
        r["name"]: {"volume": r["volume_mm3"], "intensity": r["hu_mean"]} for r in stats["levels"]
    }


TSV_COLUMNS: Sequence[str] = (
    "label", "name", "voxels", "volume_mm3", "volume_ml", "hu_mean", "hu_median", "hu_std",
    "body_hu_mean", "body_hu_median", "height_mm", "centroid_x", "centroid_y", "centroid_z", "touches_fov_edge", "fov_edges",
    "metal_ml",
)  # fmt: skip


def write_statistics(
    stats: dict, json_path: str | Path, tsv_path: str | Path | None = None
) -> None:
    """Write the statistics JSON (and a one-row-per-level TSV), atomically."""
    write_text(json_path, json.dumps(stats, indent=1) + "\n")
    if tsv_path is None:
        return
    rows = (
        {
            **r,
            "centroid_x": r["centroid"][0],
            "centroid_y": r["centroid"][1],
            "centroid_z": r["centroid"][2],
            "fov_edges": ",".join(r["fov_edges"]),
            "metal_ml": r.get("metal_ml", ""),
        }
        for r in stats["levels"]
    )
    write_tsv(tsv_path, TSV_COLUMNS, rows)
