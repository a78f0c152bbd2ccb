"""Soft tissue: table, body (trunk narrowing into the neck), liver, bowel gas, lungs, head.

Painted slab by slab so memory stays small on 512 x 512 x 300 grids; z-only profiles are
evaluated once per slice on axial grids. Lungs (-850 HU) run from the T1 top down to the T11
centre, above a diaphragm dome, so they end near the diaphragm (T10-T12) as in real scans; the
head (scalp, a 7 mm skull, brain) sits just above C1, so a field of view that starts at C1
shows the skull base.
"""

from __future__ import annotations

import numpy as np

from ctseg.phantom.grid import Grid
from ctseg.phantom.layout import Layout
from ctseg.phantom.paint import Canvas, progress
from ctseg.phantom.params import (
    TABLE_CORE_HU,
    TABLE_SHELL_HU,
    TABLE_SHELL_MM,
    TABLE_THICKNESS_MM,
    Tissue,
)


def gas_pockets(lay: Layout, u: np.ndarray) -> np.ndarray:
    """Bowel gas pockets (x, y, z, r) in the anterior abdomen from uniform draws ``u`` (n, 4)."""
    lo, hi = lay.z_c[24], lay.z_c[20]
    out = []
    for ux, uy, uz, ur in u:
        z = lo + uz * (hi - lo)
        a, b = float(lay.a(z)), float(lay.b(z))
        out.append(
            (
                lay.centre[0] + (ux - 0.5) * 0.9 * a,
                lay.y_c - (0.25 + 0.4 * uy) * b,
                z,
                (7.0 + 10.0 * ur) * lay.s_xy,
            )
        )
    return np.array(out)


def head_geometry(lay: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Centre and radii (x, y, z) of the skull's outer surface, resting just above C1."""
    s, sz = lay.s_xy, lay.s_z
    radii = np.array([72.0 * s, 92.0 * s, 85.0 * sz])
    x, y = lay.spine_xy(lay.z_c[1])
    top_c1 = lay.z_c[1] + lay.H[1] / 2
    return np.array([float(x), float(y) - 8.0 * s, top_c1 + radii[2] + 3.0 * sz]), radii


def paint_torso(c: Canvas, grid: Grid, lay: Layout, gas: np.ndarray, show: bool) -> None:
    """Table, fat, muscle, liver, gas, lungs and head, slab by slab."""
    nz = grid.shape_zyx[0]
    cx = lay.centre[0]
    zs = np.linspace(lay.spans["TL"][0] - 150, lay.spans["TL"][1] + 100, 500)
    table_top = float(np.max(lay.yc(zs) + lay.b_post(zs)))
    z_apex = lay.z_c[8] + lay.H[8] / 2  # lungs only at thoracic levels: T1 top ...
    z_base = lay.z_c[18]  # ... to the T11 centre (plus the diaphragm dome)
    sx = lay.s_xy
    liver_c = (cx - 0.35 * 165 * sx, lay.y_c - 0.05 * 115 * sx, lay.z_c[19] - 10 * lay.s_z)
    head_c, head_r = head_geometry(lay)
    axial = grid.axial
    step = 8
    for k0 in progress(range(0, nz, step), (nz + step - 1) // step, "phantom torso", show):
        sl = (
            slice(k0, min(k0 + step, nz)),
            slice(0, grid.shape_zyx[1]),
            slice(0, grid.shape_zyx[2]),
        )
        X, Y, Z = grid.coords(sl)
        # profiles depend on z only: on axial grids evaluate them once per slice
        Zp = Z[:, :1, :1] if axial else Z
        a, b, bp, f, yc = lay.a(Zp), lay.b(Zp), lay.b_post(Zp), lay.fat(Zp), lay.yc(Zp)
        dx = X - cx
        dy = Y - yc
        by = np.where(dy > 0, bp, b)
        r_body = (dx / a) ** 2 + (dy / by) ** 2
        # table under the back
        ty = Y - table_top
        table = (ty >= 0) & (ty <= TABLE_THICKNESS_MM) & (np.abs(dx) <= 240.0)
        core = table & (ty > TABLE_SHELL_MM) & (ty < TABLE_THICKNESS_MM - TABLE_SHELL_MM)
        c.paint(sl, table, Tissue.TABLE, TABLE_SHELL_HU)
        c.paint(sl, core, Tissue.TABLE, TABLE_CORE_HU)
        body = r_body <= 1.0
        c.paint(sl, body, Tissue.FAT)
        ai, bi = a - f, by - f
        inner = (dx / ai) ** 2 + (dy / bi) ** 2
        c.paint(sl, inner <= 1.0, Tissue.MUSCLE)
        if Z.min() < liver_c[2] + 80 * lay.s_z and Z.max() > liver_c[2] - 80 * lay.s_z:
            liver = ((X - liver_c[0]) / (0.45 * a)) ** 2 + ((Y - liver_c[1]) / (0.6 * b)) ** 2 + (
                (Z - liver_c[2]) / (75 * lay.s_z)
            ) ** 2 <= 1.0
            c.paint(sl, liver & (inner <= 0.8), Tissue.LIVER)
        for gx, gy, gz, gr in gas:
            if Z.min() > gz + gr or Z.max() < gz - gr:
                continue
            pocket = (X - gx) ** 2 + (Y - gy) ** 2 + (Z - gz) ** 2 <= gr**2
            c.paint(sl, pocket & (inner <= 0.8), Tissue.GAS)
        if 1 in lay.painted and Z.max() > head_c[2] - head_r[2] - 10.0:
            _paint_head(c, sl, X, Y, Z, lay, head_c, head_r)
        if Z.max() < z_base or Z.min() > z_apex:
            continue
        _paint_lungs(c, sl, X, Y, Z, Zp, lay, ai, bi, z_apex, z_base)


def _paint_lungs(c, sl, X, Y, Z, Zp, lay, ai, bi, z_apex, z_base) -> None:
    """Two ellipses inside the rib cage, apex taper, diaphragm dome, heart, mediastinum."""
    cx, sx = lay.centre[0], lay.s_xy
    wall = 14.0 * sx
    aw, bw = ai - wall, bi - wall
    sxs, sys_ = lay.spine_xy(Zp)
    taper = np.sqrt(np.clip((z_apex - Zp) / (45.0 * lay.s_z), 0.0, 1.0))
    lungs = np.zeros(Z.shape, dtype=bool)
    for side in (-1.0, 1.0):
        lx = cx + side * 0.5 * aw
        e = ((X - lx) / (0.47 * aw)) ** 2 + ((Y - lay.y_c) / (0.95 * bw)) ** 2
        dome = (
            45.0
            * lay.s_z
            * np.clip(
                1 - ((X - lx) / (0.5 * aw)) ** 2 - ((Y - lay.y_c + 0.2 * bw) / (0.9 * bw)) ** 2,
                0,
                1,
            )
        )
        lungs |= (e <= taper**2) & (Z >= z_base + dome)
    lungs &= ((X - cx) / aw) ** 2 + ((Y - lay.y_c) / bw) ** 2 <= 1.0
    heart = ((X - cx - 0.12 * aw) / (0.32 * aw)) ** 2 + ((Y - lay.y_c + 0.3 * bw) / (0.6 * bw)) ** 2
    heart_on = np.clip((lay.z_c[11] - Zp) / (40.0 * lay.s_z), 0.0, 1.0)
    lungs &= ~(heart <= heart_on**2 * 1.0)
    lungs &= np.abs(X - cx) > 12.0 * sx  # mediastinal septum
    lungs &= ((X - sxs) / (34.0 * sx)) ** 2 + ((Y - sys_ - 5 * sx) / (42.0 * sx)) ** 2 > 1.0
    c.paint(sl, lungs, Tissue.LUNG)


def _paint_head(c, sl, X, Y, Z, lay, head_c, head_r) -> None:
    """Scalp, skull (bone, never labelled) and brain; the foramen magnum lets the cord through."""
    q = (
        ((X - head_c[0]) / head_r[0]) ** 2
        + ((Y - head_c[1]) / head_r[1]) ** 2
        + ((Z - head_c[2]) / head_r[2]) ** 2
    )
    r = np.sqrt(q) * float(np.mean(head_r))  # approx. distance from the centre, mm
    outer = float(np.mean(head_r))
    th = 7.0 * lay.s_xy
    x1, y1 = lay.spine_xy(lay.z_c[1])
    canal_y = float(y1) + 14.0 * lay.s_xy
    foramen = ((X - float(x1)) ** 2 + (Y - canal_y) ** 2 <= (16.0 * lay.s_xy) ** 2) & (
        head_c[2] > Z
    )
    c.paint(sl, r <= outer + 5.0 * lay.s_xy, Tissue.MUSCLE)
    skull = (r <= outer) & ~foramen
    c.paint(sl, skull, Tissue.BONE_CORTICAL)
    c.paint(sl, skull & (r > outer - th + 2.0) & (r < outer - 2.0), Tissue.BONE_MARROW)
    c.paint(sl, r <= outer - th, Tissue.BRAIN)
    c.paint(sl, foramen & (r <= outer) & (r > outer - th), Tissue.CSF)
