"""Projecting 3D label maps onto a DRR detector.

A pixel's label is the structure with the longest path length along its ray (when that path
is at least ``min_path_mm``): in a radiograph overlapping vertebrae superimpose, and the
thickest one dominates what the pixel shows. Binary masks (bone, metal) threshold the summed
path of the structures they cover, so thin overlaps of several vertebrae still count as bone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctseg.core.labels import VERSE_NAMES
from ctseg.drr.geometry import View, VolumeGeometry
from ctseg.drr.raycast import raycast


@dataclass
class ProjectedLabels:
    """Per-label path lengths (mm) on the detector and the masks derived from them."""

    values: np.ndarray  # label value of each channel of ``paths``
    paths: np.ndarray  # (L, rows, cols) path length in mm
    multiclass: np.ndarray  # (rows, cols) label of the longest path (0 where < min_path_mm)
    bone: np.ndarray  # (rows, cols) uint8: summed vertebra path >= min_path_mm


def longest_path_labels(paths: np.ndarray, values: np.ndarray, min_path_mm: float) -> np.ndarray:
    """Label map (uint8 when the ids fit, else uint16) of the longest path per pixel."""
    values = np.asarray(values)
    dtype = np.uint8 if values.size == 0 or values.max() < 256 else np.uint16
    if values.size == 0:
        return np.zeros(paths.shape[1:], dtype=dtype)
    best = np.argmax(paths, axis=0)
    longest = np.take_along_axis(paths, best[None], axis=0)[0]
    out = values[best]
    out[longest < min_path_mm] = 0
    return out.astype(dtype)


def summed_mask(
    paths: np.ndarray, values: np.ndarray, min_path_mm: float, include: set[int] | None = None
) -> np.ndarray:
    """uint8 mask where the summed path of labels in ``include`` (all when None) reaches ``min_path_mm``."""
    values = np.asarray(values)
    sel = np.ones(values.size, bool) if include is None else np.isin(values, sorted(include))
    if not sel.any():
        return np.zeros(paths.shape[1:], dtype=np.uint8)
    return (paths[sel].sum(axis=0) >= min_path_mm).astype(np.uint8)


def project_labels(
    labels: np.ndarray,
    geom: VolumeGeometry,
    view: View,
    *,
    min_path_mm: float = 2.0,
    bone_labels: set[int] | None = None,
    isocenter: np.ndarray | None = None,
    device: str = "auto",
    **raycast_kwargs,
) -> ProjectedLabels:
    """Project a ``(Z, Y, X)`` label map; bone = VerSe vertebra ids unless ``bone_labels`` given."""
    res = raycast(
        None,
        geom,
        view,
        labels=labels,
        isocenter=isocenter,
        device=device,
        **raycast_kwargs,
    )
    assert res.label_paths is not None
    return projected_from_paths(res.label_paths, res.label_values, min_path_mm, bone_labels)


def projected_from_paths(
    paths: np.ndarray, values: np.ndarray, min_path_mm: float, bone_labels: set[int] | None = None
) -> ProjectedLabels:
    """Derive the multi-class and bone masks from per-label path lengths."""
    bone_ids = set(VERSE_NAMES) if bone_labels is None else bone_labels
    return ProjectedLabels(
        values=values,
        paths=paths,
        multiclass=longest_path_labels(paths, values, min_path_mm),
        bone=summed_mask(paths, values, min_path_mm, bone_ids),
    )


def project_binary(
    mask: np.ndarray,
    geom: VolumeGeometry,
    view: View,
    *,
    min_path_mm: float = 2.0,
    isocenter: np.ndarray | None = None,
    device: str = "auto",
    **raycast_kwargs,
) -> np.ndarray:
    """uint8 2D mask of the pixels whose ray crosses ``mask > 0`` for at least ``min_path_mm``.

    Used for metal (from the metal mask) and for any binary structure.
    """
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    res = raycast(
        None,
        geom,
        view,
        labels=binary,
        isocenter=isocenter,
        device=device,
        **raycast_kwargs,
    )
    assert res.label_paths is not None
    return summed_mask(res.label_paths, res.label_values, min_path_mm)
