"""Anatomy layout in world mm: per-level sizes, the curved spine, torso and neck profiles.

Vertebral dimensions are natural adult sizes (body_scale = 1) per VerSe id, piecewise linear
between tabulated levels; transitional levels borrow their neighbours' sizes (T13 between T12
and L1, L6 like L5). Each level's centre sits at its natural depth below the top of C1 times
the vertical scale; the spine's centreline carries a cervical lordosis, a thoracic kyphosis, a
lumbar lordosis and a scoliosis as sine bumps over their regions, so each parameter moves only
its own part of the spine. The sacrum's frame sits on its S1 endplate, tilted back by the
sacral slope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ctseg.core.anatomy import dim
from ctseg.core.labels import VERSE_NAMES
from ctseg.phantom.params import (
    L6,
    SACRUM,
    T13,
    TABLE_THICKNESS_MM,
    PhantomParams,
    is_thoracic,
    spine_ids,
)

#: Natural sacrum: length along its axis (mm) and tilt of its axis from the spine's tangent.
SACRUM_LENGTH = 100.0
SACRAL_SLOPE_DEG = 38.0


def natural_height(k: int) -> float:
    return SACRUM_LENGTH if k == SACRUM else dim("H", k)


def _bump(z: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """sin-shaped bump: 0 outside [lo, hi], 1 at its middle."""
    t = (np.asarray(z, dtype=np.float64) - lo) / max(hi - lo, 1e-9)
    return np.where((t > 0) & (t < 1), np.sin(np.pi * np.clip(t, 0, 1)), 0.0)


@dataclass
class Layout:
    """Resolved anatomy: scales, curves and per-level frames in world mm."""

    seq: list[int]  # every level of this spine, C1 ... sacrum
    levels: list[int]  # the run the field of view is about
    painted: list[int]  # levels that exist: the whole spine, or only the run (fit=True)
    transitional: str
    s_xy: float
    s_z: float
    centre: np.ndarray  # world reference: body centre x, grid / body centre y
    y_c: float  # torso centre y
    kyphosis: float
    lordosis: float
    scoliosis: float
    cervical: float
    body_jitter: tuple[float, float]
    z_c: dict[int, float]  # body centre z per level (sacrum: its S1 endplate)
    H: dict[int, float]  # scaled heights (sacrum: scaled length)
    spans: dict[str, tuple[float, float]]
    _frames: dict = field(default_factory=dict, repr=False, compare=False)

    # --- curves -------------------------------------------------------------------------
    def sag(self, z):
        """Posterior displacement of the spine (kyphosis +, lordoses -)."""
        return (
            self.kyphosis * _bump(z, *self.spans["T"])
            - self.lordosis * _bump(z, *self.spans["L"])
            - self.cervical * _bump(z, *self.spans["C"])
        )

    def scol(self, z):
        return self.scoliosis * _bump(z, *self.spans["TL"])

    def t_body(self, z):
        lo, hi = self.spans["TL"]
        return np.clip((hi - np.asarray(z, dtype=np.float64)) / (hi - lo), 0.0, 1.0)

    def neck(self, z):
        """0 in the trunk, 1 in the neck: smooth step from above the T1 top up to C5."""
        z0 = self.z_c[8] + self.H[8] / 2 + 15.0 * self.s_z
        z1 = self.z_c[5]
        t = np.clip((np.asarray(z, dtype=np.float64) - z0) / (z1 - z0), 0.0, 1.0)
        return t * t * (3 - 2 * t)

    def _b_trunk(self, z):
        return self.s_xy * self.body_jitter[1] * (110.0 + 10.0 * self.t_body(z))

    def a(self, z):  # body half-width
        n = self.neck(z)
        trunk = self.s_xy * self.body_jitter[0] * (165.0 - 8.0 * self.t_body(z))
        return (1 - n) * trunk + n * 58.0 * self.s_xy

    def b(self, z):  # anterior half-depth
        n = self.neck(z)
        return (1 - n) * self._b_trunk(z) + n * 50.0 * self.s_xy

    def b_post(self, z):  # posterior half-depth: the back follows a kyphotic spine
        n = self.neck(z)
        return (1 - n) * (self._b_trunk(z) + np.maximum(self.sag(z), 0.0)) + n * 62.0 * self.s_xy

    def yc(self, z):  # body ellipse centre y: the trunk's, moving onto the neck's
        n = self.neck(z)
        neck_c = self.spine_xy(z)[1] - 12.0 * self.s_xy
        return (1 - n) * self.y_c + n * neck_c

    def fat(self, z):
        n = self.neck(z)
        return (1 - n) * self.s_xy * (12.0 + 10.0 * self.t_body(z)) + n * 6.0 * self.s_xy

    def spine_xy(self, z):
        x = self.centre[0] + self.scol(z)
        y = self.y_c + self._b_trunk(z) - 70.0 * self.s_xy + self.sag(z)
        return x, y

    def frame(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Body centre and local axes (rows e_x, e_y, e_z) of a level; e_z = tangent (up).

        The sacrum's frame sits on its S1 endplate with e_z along its axis, tilted back by
        the sacral slope (its lower end is posterior).
        """
        if level in self._frames:
            c, axes = self._frames[level]
            return c.copy(), axes.copy()
        z = self.z_c[level]
        x, y = self.spine_xy(z)
        h = 0.5
        x1, y1 = self.spine_xy(z + h)
        x0, y0 = self.spine_xy(z - h)
        ez = np.array([(x1 - x0) / (2 * h), (y1 - y0) / (2 * h), 1.0])
        ez /= np.linalg.norm(ez)
        ey = np.array([0.0, 1.0, 0.0]) - ez[1] * ez
        ey /= np.linalg.norm(ey)
        ex = np.cross(ey, ez)
        if level == SACRUM:
            t = math.radians(SACRAL_SLOPE_DEG)
            ez, ey = math.cos(t) * ez - math.sin(t) * ey, math.sin(t) * ez + math.cos(t) * ey
        out = np.array([float(x), float(y), z]), np.stack([ex, ey, ez])
        self._frames[level] = out
        return out[0].copy(), out[1].copy()

    def z_extent(self, level: int) -> tuple[float, float]:
        """World z range (bottom, top) of a level's body (the sacrum: endplate to tip)."""
        if level == SACRUM:
            c, axes = self.frame(level)
            return float(c[2] - self.H[level] * axes[2][2]), float(c[2])
        return self.z_c[level] - self.H[level] / 2, self.z_c[level] + self.H[level] / 2

    def rib_levels(self) -> list[int]:
        """Levels that carry a rib pair: thoracic ones (T13 too; T12 not when T12_no_ribs)."""
        out = [k for k in self.painted if is_thoracic(k)]
        if self.transitional == "T12_no_ribs" and 19 in out:
            out.remove(19)
        return out

    def level_centres(self) -> dict[str, list[float]]:
        return {VERSE_NAMES[k]: self.frame(k)[0].tolist() for k in self.painted}


def _natural_depths(seq: list[int]) -> dict[int, float]:
    """Natural depth of each level's centre (sacrum: its endplate) below the top of C1."""
    top, depth = 0.0, {}
    for k in seq:
        if k == SACRUM:
            depth[k] = top
            break
        h = natural_height(k)
        depth[k] = top + h / 2
        top += h + dim("disc", k)
    return depth


def make_layout(
    p: PhantomParams,
    u: np.ndarray,
    *,
    fov_mm: np.ndarray | None = None,
    centre: np.ndarray | None = None,
    spacing: np.ndarray | None = None,
) -> Layout:
    """Resolve the anatomy from params and 7 uniform draws ``u``.

    With ``p.fit`` the run is centred on ``centre`` (the grid centre) and scaled down to fit
    ``fov_mm``; otherwise the anatomy is fixed in world space: top of C1 at z = 0, body centre
    at x = 0, torso centre y = -18 mm.
    """
    body_scale = p.body_scale if p.body_scale is not None else 0.9 + 0.2 * u[0]
    kyph = p.kyphosis_mm if p.kyphosis_mm is not None else 12.0 + 18.0 * u[1]
    lord = p.lordosis_mm if p.lordosis_mm is not None else 8.0 + 12.0 * u[2]
    scol = p.scoliosis_mm if p.scoliosis_mm is not None else 10.0 * (2 * u[3] - 1)
    jitter = (0.96 + 0.08 * u[4], 0.96 + 0.08 * u[5])
    cerv = p.cervical_lordosis_mm if p.cervical_lordosis_mm is not None else 4.0 + 8.0 * u[6]

    seq = spine_ids(p.transitional)
    levels = p.levels
    depth = _natural_depths(seq)
    first, last = levels[0], levels[-1]
    if p.fit:
        fov = np.asarray(fov_mm, dtype=np.float64)
        top_first = depth[first] - (0 if first == SACRUM else natural_height(first) / 2)
        if last == SACRUM:
            bottom_last = depth[last] + 0.8 * SACRUM_LENGTH
        else:
            bottom_last = depth[last] + natural_height(last) / 2
        span_nat = bottom_last - top_first
        # margins hold the facets / spinous tips beyond the end bodies plus a couple of slices
        margin_z = max(15.0, 2.5 * float(spacing[2])) + 6.0
        s_z = min(body_scale, (fov[2] - 2 * margin_z) / span_nat)
        margin_xy = max(8.0, float(np.max(spacing[:2])))
        post = max(kyph, 0.0) + TABLE_THICKNESS_MM
        s_xy = min(
            body_scale,
            (fov[0] - 2 * margin_xy) / (2 * 165.0 * jitter[0]),
            (fov[1] - 2 * margin_xy - post) / (2 * 120.0 * jitter[1]),
        )
        if s_z <= 0.2 or s_xy <= 0.2:
            raise ValueError(
                f"field of view {fov.round(1).tolist()} mm is too small for "
                f"{p.first_level}-{p.last_level}"
            )
        centre = np.asarray(centre, dtype=np.float64)
        z0 = centre[2] + s_z * (span_nat / 2 + top_first)
    else:
        s_z = s_xy = float(body_scale)
        centre = np.zeros(3)
        z0 = 0.0
    z_c = {k: float(z0 - s_z * depth[k]) for k in seq}
    Hs = {k: natural_height(k) * s_z for k in seq}
    last_t = T13 if T13 in seq else 19
    last_l = L6 if L6 in seq else 24

    def top_of(k):
        return z_c[k] + Hs[k] / 2

    def bottom_of(k):
        return z_c[k] - Hs[k] / 2

    spans = {
        "C": (bottom_of(7), top_of(1)),
        "T": (bottom_of(last_t), top_of(8)),
        "L": (bottom_of(last_l), top_of(20)),
        "TL": (bottom_of(last_l), top_of(8)),
    }
    # fixed offset (not the drawn kyphosis) so curvature parameters move only the spine
    y_c = float(centre[1] - (20.0 + TABLE_THICKNESS_MM) / 2)
    return Layout(
        seq=seq,
        levels=levels,
        painted=list(levels) if p.fit else list(seq),
        transitional=p.transitional,
        s_xy=float(s_xy),
        s_z=float(s_z),
        centre=centre,
        y_c=y_c,
        kyphosis=float(kyph),
        lordosis=float(lord),
        scoliosis=float(scol),
        cervical=float(cerv),
        body_jitter=jitter,
        z_c=z_c,
        H=Hs,
        spans=spans,
    )
