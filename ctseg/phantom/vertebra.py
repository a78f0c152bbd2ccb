"""Shapes of one vertebra in its natural-size local frame (u left, v posterior, w up).

A typical vertebra is a waisted elliptic body with pedicles, an arch (laminae), articular
facets, a spinous and two transverse processes. The levels that radiologists count from are
shaped differently: C1 (atlas) is a ring with lateral masses and long transverse processes but
no body; C2 (axis) carries the dens, which rises into the atlas ring; the sacrum is a curved,
tapering wedge with alae, a median crest and a sacral canal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ctseg.phantom.layout import SACRUM_LENGTH, dim
from ctseg.phantom.params import SACRUM, is_thoracic


def capsule(u, v, w, p0, p1, r):
    """Points within r of the segment p0-p1 (all in the same coordinates)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    L2 = float(d @ d)
    t = ((u - p0[0]) * d[0] + (v - p0[1]) * d[1] + (w - p0[2]) * d[2]) / max(L2, 1e-12)
    t = np.clip(t, 0.0, 1.0)
    return (u - p0[0] - t * d[0]) ** 2 + (v - p0[1] - t * d[1]) ** 2 + (
        w - p0[2] - t * d[2]
    ) ** 2 <= r * r


@dataclass
class VertGeom:
    """Natural-size dimensions of one vertebra (local mm)."""

    level: int
    H: float
    W: float
    D: float
    crx: float
    cry: float
    ycn: float  # canal centre (v)
    lam: float
    prx: float
    prz: float
    xp: float  # pedicle centre |u|
    zp: float  # pedicle centre w
    sp_len: float
    sp_ang: float
    sp_hx: float
    sp_hz: float
    tp_len: float
    tp_r: float
    tp_ang: float
    dens_top: float = 0.0  # C2: w of the dens tip

    @classmethod
    def of(cls, level: int) -> VertGeom:
        H, W, D = dim("H", level), dim("W", level), dim("D", level)
        crx, cry = dim("canal_rx", level), dim("canal_ry", level)
        prx = dim("ped_rx", level)
        return cls(
            level=level,
            H=H,
            W=W,
            D=D,
            crx=crx,
            cry=cry,
            ycn=0.8 * D / 2 + cry,
            lam=dim("lamina", level),
            prx=prx,
            prz=dim("ped_rz", level),
            xp=crx + 0.6 * prx,
            zp=0.15 * H,
            sp_len=dim("sp_len", level),
            sp_ang=math.radians(dim("sp_angle", level)),
            sp_hx=dim("sp_hx", level),
            sp_hz=dim("sp_hz", level),
            tp_len=dim("tp_len", level),
            tp_r=dim("tp_r", level),
            tp_ang=math.radians(dim("tp_angle", level)),
            # the dens rises through the C1/C2 gap to near the top of the atlas ring
            dens_top=H / 2 + dim("disc", 1) + 0.7 * dim("H", 1) if level == 2 else 0.0,
        )

    @property
    def thoracic(self) -> bool:
        return is_thoracic(self.level)

    def tp_start(self, side: float) -> np.ndarray:
        return np.array([side * (self.crx + 0.6 * self.lam), self.ycn, self.zp])

    def tp_tip(self, side: float) -> np.ndarray:
        d = np.array([side * math.cos(self.tp_ang), math.sin(self.tp_ang), 0.0])
        return self.tp_start(side) + self.tp_len * d

    def sp_start(self) -> np.ndarray:
        return np.array([0.0, self.ycn + self.cry + 0.5 * self.lam, 0.1 * self.H])

    def sp_tip(self) -> np.ndarray:
        d = np.array([0.0, math.cos(self.sp_ang), -math.sin(self.sp_ang)])
        return self.sp_start() + self.sp_len * d

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """Local natural-size bounding box of all parts."""
        if self.level == 1:
            return np.array([-42.0, -22.0, -self.H / 2 - 3]), np.array([42.0, 32.0, self.H / 2 + 3])
        tip = self.sp_tip()
        xr = max(self.crx + self.lam + self.tp_len + self.tp_r, self.W / 2) + 3
        lo = np.array([-xr, -self.D / 2 - 3, min(-self.H / 2, tip[2] - self.sp_hz) - 3])
        hi = np.array(
            [
                xr,
                max(tip[1] + self.sp_hz, self.ycn + self.cry + self.lam) + 3,
                max(self.H / 2, self.dens_top) + 3,
            ]
        )
        return lo, hi

    def canal(self, u, v):
        return (u / self.crx) ** 2 + ((v - self.ycn) / self.cry) ** 2 <= 1.0

    def bone(self, u, v, w) -> np.ndarray:
        """Boolean mask of the vertebra's bone at natural local coordinates."""
        if self.level == 1:
            return self._atlas(u, v, w)
        H, W, D = self.H, self.W, self.D
        waist = 1.0 - 0.07 * (1.0 - np.clip((2 * w / H) ** 2, 0, 1))
        body = ((u / (W / 2)) ** 2 + (v / (D / 2)) ** 2 <= waist**2) & (np.abs(w) <= H / 2)
        body &= v <= 0.8 * D / 2
        au = np.abs(u)
        ped = (
            (((au - self.xp) / self.prx) ** 2 + ((w - self.zp) / self.prz) ** 2 <= 1.0)
            & (v >= 0.8 * D / 2 - 3)
            & (v <= self.ycn + 0.3 * self.cry)
        )
        arch = (
            (
                (u / (self.crx + self.lam)) ** 2 + ((v - self.ycn) / (self.cry + self.lam)) ** 2
                <= 1.0
            )
            & (v >= self.ycn - 0.2 * self.cry)
            & (np.abs(w) <= 0.4 * H)
        )
        fx = self.crx + 0.5 * self.lam
        fy = self.ycn + 0.3 * self.cry
        facet_sup = ((au - fx) / 4.5) ** 2 + ((v - fy) / 5.0) ** 2 + (
            (w - 0.45 * H) / (0.25 * H)
        ) ** 2 <= 1
        facet_inf = ((au - fx + 1) / 4.5) ** 2 + ((v - fy - 3) / 5.0) ** 2 + (
            (w + 0.45 * H) / (0.25 * H)
        ) ** 2 <= 1
        # spinous process: flattened capsule-like bar, thin left-right, tall in its plane
        s0 = self.sp_start()
        d = np.array([0.0, math.cos(self.sp_ang), -math.sin(self.sp_ang)])
        n = np.array([0.0, math.sin(self.sp_ang), math.cos(self.sp_ang)])
        t = (v - s0[1]) * d[1] + (w - s0[2]) * d[2]
        q = (v - s0[1]) * n[1] + (w - s0[2]) * n[2]
        taper = 1.0 - 0.3 * np.clip(t / self.sp_len, 0, 1)
        spin = (
            (t >= 0)
            & (t <= self.sp_len)
            & ((u / self.sp_hx) ** 2 + (q / (self.sp_hz * taper)) ** 2 <= 1.0)
        )
        tps = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=bool)
        for side in (-1.0, 1.0):
            tps |= capsule(u, v, w, self.tp_start(side), self.tp_tip(side), self.tp_r)
        bone = body | ped | arch | facet_sup | facet_inf | spin | tps
        if self.level == 2:
            bone |= capsule(u, v, w, (0, -4.0, H / 2 - 2), (0, -4.0, self.dens_top - 5), 5.0)
        return bone & ~self.canal(u, v)

    def _atlas(self, u, v, w) -> np.ndarray:
        """C1: a ring (anterior and posterior arch) with lateral masses, no body.

        The ring's hole holds the dens of C2 in front and the cord behind, so the centre of
        the level holds no bone at all, unlike every other level.
        """
        v0, ru, rv, th = 4.0, 23.0, 22.0, 5.5
        outer = (u / ru) ** 2 + ((v - v0) / rv) ** 2 <= 1.0
        inner = (u / (ru - th)) ** 2 + ((v - v0) / (rv - th)) ** 2 < 1.0
        ring = outer & ~inner & (np.abs(w) <= 0.4 * self.H)
        au = np.abs(u)
        masses = ((au - 15.0) / 7.0) ** 2 + ((v - 1.0) / 9.0) ** 2 + (
            w / (0.5 * self.H + 1.5)
        ) ** 2 <= 1.0
        tps = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=bool)
        for side in (-1.0, 1.0):
            tps |= capsule(u, v, w, (side * 21.0, 1.0, 0.0), (side * 37.0, 3.0, 0.0), 3.5)
        return (ring | masses | tps) & ~self.canal(u, v)


class SacrumGeom:
    """The sacrum in its frame: w = 0 at the S1 endplate, down to -SACRUM_LENGTH at the tip."""

    level = SACRUM
    L = SACRUM_LENGTH
    W = 48.0  # S1 body width (discs and screws use it)
    D = 32.0

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([-55.0, -19.0, -self.L - 2]), np.array([55.0, 40.0, 2.0])

    def bone(self, u, v, w) -> np.ndarray:
        """Core wedge curved concave forward, alae at the top, median crest; minus the canal."""
        t = -w
        inside = (t >= 0) & (t <= self.L)
        f = np.clip(t / self.L, 0.0, 1.0)
        wc, dc = 24.0 - 14.0 * f, 16.0 - 10.0 * f
        vc = 10.0 * np.sin(np.pi * f)  # the middle bows back
        core = (u / wc) ** 2 + ((v - vc) / dc) ** 2 <= 1.0
        wa = 52.0 - 0.6 * t
        alae = ((np.abs(u) / wa) ** 4 + ((v - vc - 4.0) / 11.0) ** 2 <= 1.0) & (t <= 50.0)
        crest = (np.abs(u) <= 3.5) & (v >= vc) & (v <= vc + dc + 7.0) & (t >= 5) & (f <= 0.75)
        canal = (
            (u / (9.0 - 4.0 * f)) ** 2 + ((v - vc - 0.45 * dc) / (5.5 - 2.5 * f)) ** 2 <= 1.0
        ) & (f < 0.8)
        return inside & (core | alae | crest) & ~canal


def geometry_of(level: int) -> VertGeom | SacrumGeom:
    return SacrumGeom() if level == SACRUM else VertGeom.of(level)
