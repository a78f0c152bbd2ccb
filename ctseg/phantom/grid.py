"""Index <-> world mapping of the canonical output grid (SimpleITK convention)."""

from __future__ import annotations

import numpy as np


class Grid:
    """The canonical grid: ``shape_xyz`` voxels of ``spacing`` along the columns of ``m``."""

    def __init__(self, shape_xyz, spacing, origin, direction) -> None:
        self.shape_xyz = np.asarray(shape_xyz, dtype=int)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.origin = np.asarray(origin, dtype=np.float64)
        self.m = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        self.shape_zyx = tuple(int(v) for v in self.shape_xyz[::-1])
        # axis j of the index maps to world vector step[:, j]
        self.step = self.m * self.spacing[None, :]

    def to_index(self, pts: np.ndarray) -> np.ndarray:
        """Continuous (x, y, z) indices of world points (n, 3)."""
        return ((np.atleast_2d(pts) - self.origin) @ self.m) / self.spacing

    def box(self, pts: np.ndarray, pad_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Unclipped integer index box [lo, hi) (x, y, z) holding world points ``pts``."""
        idx = self.to_index(pts)
        pad = pad_mm / self.spacing
        lo = np.floor(idx.min(axis=0) - pad).astype(int)
        hi = np.ceil(idx.max(axis=0) + pad).astype(int) + 1
        return lo, hi

    def clip(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """(z, y, x) slices of the part of box [lo, hi) inside the grid, or None."""
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape_xyz)
        if np.any(hi <= lo):
            return None
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))

    def bbox(self, pts: np.ndarray, pad_mm: float = 0.0) -> tuple[slice, slice, slice] | None:
        """(z, y, x) slices of the grid box holding world points ``pts``, or None if outside."""
        return self.clip(*self.box(pts, pad_mm))

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World X, Y, Z (broadcast to the box's [z, y, x] shape) of the voxels in ``sl``.

        The slices may reach beyond the grid (visibility counts a vertebra's whole extent).
        """
        k = np.arange(sl[0].start, sl[0].stop, dtype=np.float64)[:, None, None]
        j = np.arange(sl[1].start, sl[1].stop, dtype=np.float64)[None, :, None]
        i = np.arange(sl[2].start, sl[2].stop, dtype=np.float64)[None, None, :]
        out = []
        for c in range(3):
            w = self.origin[c] + self.step[c, 0] * i + self.step[c, 1] * j + self.step[c, 2] * k
            out.append(np.broadcast_to(w, (k.shape[0], j.shape[1], i.shape[2])))
        return out[0], out[1], out[2]

    def index_to_world(self, idx_xyz: np.ndarray) -> np.ndarray:
        return self.origin + np.atleast_2d(idx_xyz) @ self.step.T

    @property
    def axial(self) -> bool:
        """True when z is constant within each index slice (profiles per slice suffice)."""
        return bool(np.allclose(self.m[2, :2], 0.0))
