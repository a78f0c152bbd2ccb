"""Titanium pedicle screws with tulip heads, and rods joining consecutive instrumented levels."""

from __future__ import annotations

import math

import numpy as np

from ctseg.phantom.grid import Grid
from ctseg.phantom.layout import Layout
from ctseg.phantom.paint import Canvas
from ctseg.phantom.params import Tissue, is_thoracic, level_id
from ctseg.phantom.vertebra import VertGeom, capsule


def paint_implants(c: Canvas, grid: Grid, lay: Layout, implants: list[str]) -> None:
    """Screws through both pedicles of each named level; rods where levels are consecutive.

    Implant geometry goes into ``c.metal`` before blur and noise; labels are untouched (labels
    are anatomy, metal is a separate mask).
    """
    if not implants:
        return
    rmin = 0.71 * float(grid.spacing.max())  # a line always hits at least one voxel centre
    ids = sorted({level_id(n) for n in implants}, key=lay.seq.index)
    heads: dict[tuple[int, float], np.ndarray] = {}
    scale = np.array([lay.s_xy, lay.s_xy, lay.s_z])
    parts: list[tuple[np.ndarray, np.ndarray, float]] = []  # world segments
    for k in ids:
        g = VertGeom.of(k)
        centre, axes = lay.frame(k)
        conv = math.radians(10.0 if is_thoracic(k) else 15.0)
        rs = 2.5 if is_thoracic(k) else 3.25

        def world(p, centre=centre, axes=axes):
            return centre + (np.asarray(p) * scale) @ axes

        for side in (-1.0, 1.0):
            entry = np.array([side * g.xp, g.ycn + 0.3 * g.cry, g.zp])
            d = np.array([-side * math.sin(conv), -math.cos(conv), 0.0])
            length = (entry[1] - (-g.D / 2 + 4.0)) / math.cos(conv)
            parts.append(
                (world(entry - 2 * d), world(entry + length * d), max(rs * lay.s_xy, rmin))
            )
            head = entry - 9.0 * d
            parts.append((world(entry - 3 * d), world(head - 4 * d), max(5.5 * lay.s_xy, rmin)))
            heads[(k, side)] = world(head)
    for k, k2 in zip(ids, ids[1:], strict=False):
        if lay.seq.index(k2) != lay.seq.index(k) + 1:
            continue
        for side in (-1.0, 1.0):
            a, b = heads[(k, side)], heads[(k2, side)]
            d = (b - a) / np.linalg.norm(b - a)
            parts.append((a - 4 * d, b + 4 * d, max(3.0 * lay.s_xy, rmin)))
    for p0, p1, r in parts:
        sl = grid.bbox(np.stack([p0, p1]), pad_mm=r + grid.spacing.max())
        if sl is None:
            continue
        X, Y, Z = grid.coords(sl)
        mask = capsule(X, Y, Z, p0, p1, r)
        c.paint(sl, mask, Tissue.METAL)
        c.metal[sl][mask] = 1
