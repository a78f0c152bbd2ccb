"""Bones: vertebrae (labelled), discs and canal, ribs and pelvis (bone, never labelled).

Every level of the spine (C1 ... sacrum; only the run with ``fit``) is painted where it meets
the grid, each in its own
bounding box; the label map gets a level's VerSe id only when the level is *visible*, i.e.
more than half of its voxels lie inside the grid. The fraction is counted on the vertebra's
whole box, extended beyond the grid on the same voxel lattice, so a crop decides visibility
exactly as the uncropped grid would.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ctseg.core.labels import VERSE_NAMES
from ctseg.phantom.grid import Grid
from ctseg.phantom.layout import Layout, dim
from ctseg.phantom.paint import Canvas, box_corners, local, progress, shell_mm, split_cortex
from ctseg.phantom.params import SACRUM, T13, Tissue
from ctseg.phantom.vertebra import VertGeom, capsule, geometry_of

#: Fraction of the half-circumference each rib pair reaches, from the last ribs upwards.
_RIB_END = {T13: 0.3, 19: 0.35, 18: 0.5, 17: 0.72, 16: 0.78, 15: 0.8}


def paint_discs_and_canal(c: Canvas, grid: Grid, lay: Layout) -> None:
    """Discs between consecutive levels (none between C1 and C2) and the CSF-filled canal."""
    seq = lay.painted
    for i, k in enumerate(seq):
        if k == SACRUM:
            break
        g = VertGeom.of(k)
        centre, axes = lay.frame(k)
        ext = dim("disc", k) / 2 + 2
        corners = box_corners(
            centre,
            axes,
            [-g.crx - 2, g.ycn - g.cry - 2, -g.H / 2 - ext],
            [g.crx + 2, g.ycn + g.cry + 2, g.H / 2 + ext],
            lay.s_xy,
            lay.s_z,
        )
        sl = grid.bbox(corners, pad_mm=grid.spacing.max())
        if sl is not None:
            u, v, w = local(*grid.coords(sl), centre, axes, lay.s_xy, lay.s_z)
            canal = g.canal(u, v) & (w >= -g.H / 2 - ext) & (w <= g.H / 2 + ext)
            c.paint(sl, canal, Tissue.CSF)
        if k == 1 or i + 1 >= len(seq):
            continue  # atlanto-axial joint: the dens, no disc
        k2 = seq[i + 1]
        c1, a1 = lay.frame(k)
        c2, a2 = lay.frame(k2)
        bot = c1 - a1[2] * lay.H[k] / 2
        top = c2 if k2 == SACRUM else c2 + a2[2] * lay.H[k2] / 2
        mid = (bot + top) / 2
        ez = bot - top
        height = float(np.linalg.norm(ez))
        ez /= height
        ey = np.array([0.0, 1.0, 0.0]) - ez[1] * ez
        ey /= np.linalg.norm(ey)
        axes = np.stack([np.cross(ey, ez), ey, ez])
        g2 = geometry_of(k2)
        W = (g.W + g2.W) / 2
        D = (g.D + g2.D) / 2
        hw = height / lay.s_z / 2 + 2.0
        corners = box_corners(
            mid, axes, [-W / 2, -D / 2, -hw], [W / 2, D / 2, hw], lay.s_xy, lay.s_z
        )
        sl = grid.bbox(corners, pad_mm=grid.spacing.max())
        if sl is None:
            continue
        u, v, w = local(*grid.coords(sl), mid, axes, lay.s_xy, lay.s_z)
        disc = (
            ((u / (W / 2)) ** 2 + (v / (D / 2)) ** 2 <= 0.97)
            & (np.abs(w) <= hw)
            & (v <= 0.8 * D / 2)
        )
        c.paint(sl, disc, Tissue.DISC)


def rib_points(lay: Layout, level: int, side: float) -> np.ndarray:
    """World polyline of one rib: from the transverse process tip round the chest wall."""
    g = VertGeom.of(level)
    centre, axes = lay.frame(level)
    scale = np.array([lay.s_xy, lay.s_xy, lay.s_z])
    tip_local = g.tp_tip(side) + np.array([side * 1.5, 0.5, 0.0])
    tip = centre + (tip_local * scale) @ axes
    z0 = tip[2]
    cx = lay.centre[0]
    inset = 8.0 * lay.s_xy
    A = float(lay.a(z0) - lay.fat(z0) - inset)
    Bp = float(lay.b_post(z0) - lay.fat(z0) - inset)
    Ba = float(lay.b(z0) - lay.fat(z0) - inset)
    yc = float(lay.yc(z0))
    theta0 = math.asin(min(0.95, (abs(tip[0] - cx) + 18.0 * lay.s_xy) / A))
    end = _RIB_END.get(level, 0.86) * math.pi
    drop = 1.6 * (lay.H[level] + dim("disc", level) * lay.s_z)
    th = np.linspace(theta0, end, 160)
    frac = (th - theta0) / (end - theta0)
    ring = np.stack(
        [
            cx + side * A * np.sin(th),
            yc + np.where(np.cos(th) > 0, Bp, Ba) * np.cos(th),
            z0 - drop * frac**1.3,
        ],
        axis=1,
    )
    lead = np.linspace(0, 1, 40)[:, None]
    neck = tip[None, :] + lead * (ring[0] - tip)[None, :]
    pts = np.concatenate([neck, ring])
    # resample densely (well under a voxel) so the rasterised centreline is connected
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    n = max(2, int(s[-1] / 0.25) + 1)
    si = np.linspace(0, s[-1], n)
    return np.stack([np.interp(si, s, pts[:, d]) for d in range(3)], axis=1)


def paint_ribs(c: Canvas, grid: Grid, lay: Layout, rib_hu: dict[int, tuple[float, float]]) -> None:
    """A rib pair at every rib-bearing level: tube around the centreline, cortex + marrow."""
    r = max(4.5 * lay.s_xy, 0.75 * float(grid.spacing.max()))
    shell = shell_mm(grid)
    for k in lay.rib_levels():
        for side in (-1.0, 1.0):
            pts = rib_points(lay, k, side)
            sl = grid.bbox(pts, pad_mm=r + 2 * grid.spacing.max())
            if sl is None:
                continue
            idx = np.rint(grid.to_index(pts)).astype(int)
            lo = np.array([sl[2].start, sl[1].start, sl[0].start])
            hi = np.array([sl[2].stop, sl[1].stop, sl[0].stop])
            keep = np.all((idx >= lo) & (idx < hi), axis=1)
            if not keep.any():
                continue
            idx = idx[keep] - lo
            seed = np.ones((hi - lo)[::-1], dtype=bool)
            seed[idx[:, 2], idx[:, 1], idx[:, 0]] = False
            dist = ndimage.distance_transform_edt(seed, sampling=grid.spacing[::-1])
            rib = dist <= r
            free = (c.labels[sl] == 0) & (c.tissue[sl] != Tissue.CSF)
            marrow = rib & (dist <= r - shell) & free
            c.paint(sl, rib & free, Tissue.RIB_CORTICAL, rib_hu[k][0])
            c.paint(sl, marrow, Tissue.RIB_MARROW, rib_hu[k][1])


def pelvis_parts(lay: Layout) -> list[tuple[str, tuple]]:
    """World geometry of the pelvis, hung on the sacrum's S1 endplate.

    Iliac wings (a 7 mm plate, part of an ellipsoidal bowl lateral to the sacrum, its crest at
    about the L4/L5 disc), pubic and ischial rami and femoral heads with necks.
    """
    c, _ = lay.frame(SACRUM)
    s, sz = lay.s_xy, lay.s_z
    x0, y0, z0 = c
    parts: list[tuple[str, tuple]] = []
    for side in (-1.0, 1.0):
        centre = np.array([x0 + side * 35 * s, y0 - 5 * s, z0 - 35 * sz])
        parts.append(("wing", (side, centre, np.array([75 * s, 65 * s, 70 * sz]), 3.5 * s)))
        hip = np.array([x0 + side * 92 * s, y0 - 35 * s, z0 - 80 * sz])
        parts.append(("ball", (hip, 24 * s)))
        neck_end = hip + np.array([side * 30 * s, 0.0, -30 * sz])
        parts.append(("rod", (hip, neck_end, 14 * s)))
        parts.append(
            (
                "rod",
                (
                    hip + np.array([-side * 10 * s, -15 * s, 0]),
                    np.array([x0 + side * 14 * s, y0 - 120 * s, z0 - 95 * sz]),
                    8 * s,
                ),
            )
        )
        parts.append(
            (
                "rod",
                (
                    hip + np.array([-side * 5 * s, 15 * s, -15 * sz]),
                    np.array([x0 + side * 50 * s, y0 + 5 * s, z0 - 125 * sz]),
                    9 * s,
                ),
            )
        )
    return parts


def paint_pelvis(c: Canvas, grid: Grid, lay: Layout) -> None:
    """Pelvic bones as bone tissue (cortex + marrow), never labelled as a vertebra."""
    if SACRUM not in lay.painted:
        return
    shell = shell_mm(grid)
    rmin = 0.75 * float(grid.spacing.max())
    x0 = lay.frame(SACRUM)[0][0]
    for kind, g in pelvis_parts(lay):
        if kind == "wing":
            side, centre, radii, half = g
            half = max(half, rmin)
            lo = centre - radii - half
            hi = centre + radii + half
            lo[0] = x0 + 40 * lay.s_xy if side > 0 else lo[0]
            hi[0] = x0 - 40 * lay.s_xy if side < 0 else hi[0]
            sl = grid.bbox(np.stack([lo, hi]), pad_mm=grid.spacing.max())
            if sl is None:
                continue
            X, Y, Z = grid.coords(sl)
            rho = np.sqrt(
                ((X - centre[0]) / radii[0]) ** 2
                + ((Y - centre[1]) / radii[1]) ** 2
                + ((Z - centre[2]) / radii[2]) ** 2
            )
            d = np.abs(rho - 1.0) * float(np.mean(radii))
            keep = (
                (side * (X - x0) >= 45 * lay.s_xy)
                & (Z >= centre[2] - 0.35 * radii[2])
                & (Y >= centre[1] - 0.6 * radii[1])
            )
            bone = (d <= half) & keep
            marrow = bone & (d <= half - shell)
        else:
            if kind == "ball":
                p0, r = g
                p1 = p0
            else:
                p0, p1, r = g
            r = max(r, rmin)
            sl = grid.bbox(np.stack([p0, p1]), pad_mm=r + grid.spacing.max())
            if sl is None:
                continue
            X, Y, Z = grid.coords(sl)
            bone = capsule(X, Y, Z, p0, p1, r)
            marrow = capsule(X, Y, Z, p0, p1, r - shell) if r > shell else np.zeros_like(bone)
        c.paint(sl, bone, Tissue.BONE_CORTICAL)
        c.paint(sl, marrow, Tissue.BONE_MARROW)


def paint_vertebrae(
    c: Canvas, grid: Grid, lay: Layout, vert_hu: dict[int, tuple[float, float]], show: bool
) -> dict[int, float]:
    """Each level in its own box: cortical shell, cancellous core, provisional label.

    Returns each level's visible fraction (voxels inside the grid / voxels of the whole level
    on this voxel lattice); levels that miss the grid are absent.
    """
    shell = shell_mm(grid)
    frac: dict[int, float] = {}
    for k in progress(lay.painted, len(lay.painted), "phantom vertebrae", show):
        g = geometry_of(k)
        centre, axes = lay.frame(k)
        lo, hi = g.box()
        blo, bhi = grid.box(
            box_corners(centre, axes, lo, hi, lay.s_xy, lay.s_z), pad_mm=grid.spacing.max()
        )
        sl = grid.clip(blo, bhi)
        if sl is None:
            continue
        inside = np.all(blo >= 0) and np.all(bhi <= grid.shape_xyz)
        if inside:
            u, v, w = local(*grid.coords(sl), centre, axes, lay.s_xy, lay.s_z)
            bone = g.bone(u, v, w)
            frac[k] = 1.0 if bone.any() else 0.0
        else:
            full = (slice(blo[2], bhi[2]), slice(blo[1], bhi[1]), slice(blo[0], bhi[0]))
            u, v, w = local(*grid.coords(full), centre, axes, lay.s_xy, lay.s_z)
            whole = g.bone(u, v, w)
            part = tuple(
                slice(s.start - f.start, s.stop - f.start) for s, f in zip(sl, full, strict=True)
            )
            bone = whole[part]
            total = int(whole.sum())
            frac[k] = float(bone.sum()) / total if total else 0.0
            del whole
        bone &= c.labels[sl] == 0
        cortex = split_cortex(bone, grid, shell)
        c.paint(sl, bone & ~cortex, Tissue.CANCELLOUS, vert_hu[k][1])
        c.paint(sl, cortex, Tissue.CORTICAL, vert_hu[k][0])
        c.labels[sl][bone] = k
    return frac


def visible_levels(frac: dict[int, float], seq: list[int]) -> list[int]:
    """Levels with more than half of their voxels inside the grid, in spine order."""
    return [k for k in seq if frac.get(k, 0.0) > 0.5]


def describe(frac: dict[int, float]) -> dict[str, float]:
    return {VERSE_NAMES[k]: round(v, 4) for k, v in frac.items()}
