"""Painting primitives: the canvas of arrays, local frames, cortex split, progress bars."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ctseg.phantom.grid import Grid
from ctseg.phantom.params import TISSUE_HU, Tissue


class Canvas:
    """The arrays being painted on the canonical grid: float HU, tissue classes, labels, metal."""

    def __init__(self, grid: Grid) -> None:
        self.hu = np.full(grid.shape_zyx, TISSUE_HU[Tissue.AIR], dtype=np.float32)
        self.tissue = np.zeros(grid.shape_zyx, dtype=np.uint8)
        self.labels = np.zeros(grid.shape_zyx, dtype=np.uint8)
        self.metal = np.zeros(grid.shape_zyx, dtype=np.uint8)

    def paint(self, sl, mask: np.ndarray, tissue: Tissue, hu: float | None = None) -> None:
        self.hu[sl][mask] = TISSUE_HU[tissue] if hu is None else hu
        self.tissue[sl][mask] = tissue


def progress(it, total: int, desc: str, show: bool):
    return tqdm(it, total=total, desc=desc, leave=False, disable=not show, mininterval=1.0)


def local(X, Y, Z, centre, axes, s_xy, s_z):
    """Natural-size local coordinates (u left, v posterior, w along the spine)."""
    dx, dy, dz = X - centre[0], Y - centre[1], Z - centre[2]
    u = (dx * axes[0, 0] + dy * axes[0, 1] + dz * axes[0, 2]) / s_xy
    v = (dx * axes[1, 0] + dy * axes[1, 1] + dz * axes[1, 2]) / s_xy
    w = (dx * axes[2, 0] + dy * axes[2, 1] + dz * axes[2, 2]) / s_z
    return u, v, w


def box_corners(centre, axes, lo, hi, s_xy, s_z) -> np.ndarray:
    """World corners of a natural-size local box."""
    scale = np.array([s_xy, s_xy, s_z])
    pts = []
    for cu in (lo[0], hi[0]):
        for cv in (lo[1], hi[1]):
            for cw in (lo[2], hi[2]):
                pts.append(centre + (np.array([cu, cv, cw]) * scale) @ axes)
    return np.array(pts)


def shell_mm(grid: Grid) -> float:
    """Cortical shell thickness: 1.5 mm, but at least one voxel so the cortex exists."""
    return max(1.5, float(grid.spacing.max()))


def split_cortex(bone: np.ndarray, grid: Grid, thickness: float) -> np.ndarray:
    """Boolean cortical part of ``bone``: voxels within ``thickness`` mm of its outside."""
    padded = np.pad(bone, 1)
    dist = ndimage.distance_transform_edt(padded, sampling=grid.spacing[::-1])[1:-1, 1:-1, 1:-1]
    return bone & (dist <= thickness + 1e-6)
