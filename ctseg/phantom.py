"""Synthetic torso CT with a labelled spine: the workflow's embedded default data.

The phantom lets the whole workflow run (and be tested against exact truth) without any patient
data. It is built in world millimetres (DICOM patient coordinates, LPS: +x patient left,
+y posterior, +z superior; supine, so the spine is posterior and anterior is -y) and then
sampled on any grid, so size, spacing and even an oblique direction are free parameters while
the anatomy stays where it is.

Anatomy, noise-free HU (classes in :class:`Tissue`):

* air -1000; a carbon-fibre patient table under the back (shells 150 HU, foam core -500, so
  metal thresholds never pick it up);
* torso ellipse: subcutaneous fat -100 around muscle / soft tissue 40, a liver 60, a few bowel
  gas pockets -950 in the abdomen, lungs -850 only between the T1 top and the T11 centre
  (with a diaphragm dome, the mediastinum and the paravertebral gutters left out);
* a spine along a curved centreline (kyphosis over T1-T12 and lordosis over L1-L5 as peak
  posterior / anterior displacement in mm, scoliosis as peak left displacement over T1-L5);
  each vertebra has a body (waisted elliptic cylinder, flat back), pedicles, laminae, articular
  facets, a spinous and two transverse processes, all sized per level so vertebrae grow
  caudally; the bone's outer shell (EDT <= max(1.5 mm, largest voxel side)) is cortical
  (1100-1400 HU per vertebra), the rest cancellous (210-290 HU);
* intervertebral discs 90 HU and the canal (CSF 15 HU), neither labelled;
* ribs at every thoracic level in range, starting at the transverse process tip and curving
  around the chest wall, descending anteriorly; bone but never part of a vertebra label;
* optional titanium pedicle screws with tulip heads (7000 HU) and rods joining the heads of
  consecutive instrumented vertebrae.

Truth: ``labels`` gives every bone voxel of a vertebra (body and posterior elements) its VerSe
id; ``metal`` is the implant geometry before blur and noise. Where an implant overlaps bone the
CT value is the implant's but the label stays the vertebra (labels are anatomy, metal is a
separate mask); implant voxels outside bone are label 0. Centroids are the centre of mass of
each vertebra's label voxels on the grid, in world mm. Finally a Gaussian PSF (``blur_mm`` =
sigma in mm) and in-plane-correlated Gaussian noise (``noise_hu`` = its std) are applied.

Sizing: the anatomy is natural size times ``body_scale``; if the chosen levels do not fit the
z field of view with margins the vertical scale shrinks (and likewise in-plane for the torso),
so a small default volume still holds all of T1-L5. Thin structures are widened to at least
about one voxel (cortex, ribs, implants) so they survive sampling on coarse grids.

All random choices come from ``numpy.random.default_rng(seed)`` with a fixed number of draws,
so the same seed gives the same anatomy on any grid and the same bytes on the same grid.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from ctseg.core.atomic import atomic_dir
from ctseg.core.labels import VERSE_IDS, VERSE_NAMES, level_range
from ctseg.ingest.dicomwrite import write_dicom_series

__all__ = [
    "Phantom",
    "PhantomParams",
    "Tissue",
    "TISSUE_HU",
    "generate",
    "write_dicom_series",
    "write_phantom_case",
]


class Tissue(IntEnum):
    """Tissue class of each voxel (``Phantom.tissue``), before blur and noise."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    LUNG = 3
    LIVER = 4
    GAS = 5
    TABLE = 6
    CSF = 7
    DISC = 8
    CORTICAL = 9
    CANCELLOUS = 10
    RIB_CORTICAL = 11
    RIB_MARROW = 12
    METAL = 13


#: Fixed HU of the classes that do not vary per vertebra / rib.
TISSUE_HU: dict[Tissue, float] = {
    Tissue.AIR: -1000.0,
    Tissue.FAT: -100.0,
    Tissue.MUSCLE: 40.0,
    Tissue.LUNG: -850.0,
    Tissue.LIVER: 60.0,
    Tissue.GAS: -950.0,
    Tissue.CSF: 15.0,
    Tissue.DISC: 90.0,
    Tissue.METAL: 7000.0,  # titanium at 120 kV
}
TABLE_SHELL_HU = 150.0
TABLE_CORE_HU = -500.0
TABLE_THICKNESS_MM = 16.0
TABLE_SHELL_MM = 3.0
HU_MIN, HU_MAX = -1024, 32767

# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass
class PhantomParams:
    """Everything that shapes a phantom besides the seed (None = drawn from the seed)."""

    shape: tuple[int, int, int] = (96, 80, 112)  # x, y, z voxels
    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 4.0)
    first_level: str = "T1"
    last_level: str = "L5"
    kyphosis_mm: float | None = None  # peak posterior displacement over T1-T12
    lordosis_mm: float | None = None  # peak anterior displacement over L1-L5
    scoliosis_mm: float | None = None  # peak displacement to the patient's left over T1-L5
    body_scale: float | None = None  # natural adult size x this (0.9-1.1 when drawn)
    implants: list[str] = field(default_factory=list)  # vertebrae with pedicle screws
    noise_hu: float = 20.0
    blur_mm: float = 1.0  # Gaussian PSF sigma in mm
    origin_mm: tuple[float, float, float] | None = None  # None: grid centre at world 0
    direction: tuple[float, ...] | None = None  # 9 cosines, row-major (SimpleITK); None = I

    def __post_init__(self) -> None:
        self.shape = tuple(int(v) for v in self.shape)
        self.spacing_mm = tuple(float(v) for v in self.spacing_mm)
        self.implants = [str(v) for v in (self.implants or [])]
        if self.origin_mm is not None:
            self.origin_mm = tuple(float(v) for v in self.origin_mm)
        if self.direction is not None:
            self.direction = tuple(float(v) for v in np.asarray(self.direction).ravel())
        self.validate()

    def validate(self) -> None:
        """Raise ValueError for parameters that cannot make a phantom."""
        if len(self.shape) != 3 or min(self.shape) < 4:
            raise ValueError(f"shape must be 3 sizes >= 4 voxels, got {self.shape}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be 3 positive values, got {self.spacing_mm}")
        for name in (self.first_level, self.last_level):
            if name not in VERSE_IDS or VERSE_IDS[name] > 24:
                raise ValueError(f"level {name!r} is not one of C1-L5")
        levels = level_range(self.first_level, self.last_level)
        bad = [v for v in self.implants if VERSE_IDS.get(v) not in levels]
        if bad:
            raise ValueError(
                f"implant levels {bad} are outside {self.first_level}-{self.last_level}"
            )
        if self.origin_mm is not None and len(self.origin_mm) != 3:
            raise ValueError("origin_mm must hold 3 values")
        if self.direction is not None:
            m = np.asarray(self.direction, dtype=np.float64)
            if m.size != 9:
                raise ValueError("direction must hold 9 cosines")
            m = m.reshape(3, 3)
            if not np.allclose(m.T @ m, np.eye(3), atol=1e-6) or np.linalg.det(m) < 0:
                raise ValueError("direction must be a rotation (orthonormal, right-handed)")
        if self.noise_hu < 0 or self.blur_mm < 0:
            raise ValueError("noise_hu and blur_mm must be >= 0")
        if self.body_scale is not None and not 0.3 <= self.body_scale <= 2.0:
            raise ValueError(f"body_scale {self.body_scale} outside 0.3-2.0")

    @classmethod
    def from_dict(cls, d: dict | None) -> PhantomParams:
        """Build from config (YAML lists welcome); unknown keys raise ValueError naming them."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown phantom parameter(s): {', '.join(unknown)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass
class Phantom:
    """A generated phantom: arrays ``[z, y, x]`` plus SimpleITK geometry and the truth."""

    hu: np.ndarray  # int16
    labels: np.ndarray  # uint8 VerSe ids
    metal: np.ndarray  # uint8 0/1, implant geometry before blur/noise
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    centroids: list[dict]
    tissue: np.ndarray | None = None  # uint8 Tissue classes (noise-free truth)
    info: dict = field(default_factory=dict)  # resolved random choices, scales, level centres

    def image(self, which: str = "hu") -> sitk.Image:
        """One of hu / labels / metal / tissue as a SimpleITK image with the phantom's geometry."""
        arrays = {"hu": self.hu, "labels": self.labels, "metal": self.metal, "tissue": self.tissue}
        if which not in arrays or arrays[which] is None:
            raise ValueError(f"unknown or absent phantom array {which!r}")
        img = sitk.GetImageFromArray(arrays[which])
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


# --------------------------------------------------------------------------------------------
# Natural (body_scale = 1) vertebral dimensions per VerSe id, in mm, piecewise linear
# --------------------------------------------------------------------------------------------

_DIMS: dict[str, dict[int, float]] = {
    "H": {1: 10, 3: 13, 7: 14, 8: 16, 19: 23, 20: 25, 24: 27},  # body height
    "W": {1: 20, 7: 26, 8: 27, 19: 40, 20: 42, 24: 50},  # body width (left-right)
    "D": {1: 15, 7: 17, 8: 17, 19: 29, 20: 31, 24: 35},  # body depth (antero-posterior)
    "disc": {1: 4, 7: 5, 8: 4, 19: 6, 20: 8, 23: 11, 24: 10},  # disc below this level
    "canal_rx": {1: 12, 7: 12, 8: 8.5, 19: 9.5, 20: 11, 24: 12.5},
    "canal_ry": {1: 8, 7: 8, 8: 7.5, 19: 8, 20: 8.5, 24: 9},
    "ped_rx": {1: 3, 7: 3, 8: 3.5, 19: 4.5, 20: 5, 24: 8},
    "ped_rz": {1: 3.5, 7: 4, 8: 5.5, 19: 8, 20: 8, 24: 8},
    "lamina": {1: 4, 7: 4, 8: 4.5, 19: 5.5, 20: 6, 24: 7},
    "sp_len": {1: 8, 7: 30, 8: 32, 19: 28, 20: 30, 24: 26},
    "sp_angle": {1: 10, 7: 25, 8: 30, 13: 55, 19: 25, 20: 12, 24: 8},  # degrees below horizontal
    "sp_hx": {1: 3, 8: 3.5, 19: 4, 20: 4.5, 24: 5},
    "sp_hz": {1: 4, 8: 5, 19: 7, 20: 9, 24: 10},
    "tp_len": {1: 8, 7: 10, 8: 24, 14: 20, 19: 10, 20: 16, 22: 25, 24: 20},
    "tp_r": {1: 3, 8: 5, 19: 4.5, 20: 4, 24: 4.5},
    "tp_angle": {1: 0, 8: 30, 19: 20, 20: 5, 24: 5},  # degrees towards posterior
}


def _dim(name: str, level: int) -> float:
    table = _DIMS[name]
    xs = np.array(sorted(table), dtype=float)
    return float(np.interp(level, xs, [table[int(x)] for x in xs]))


def _is_thoracic(level: int) -> bool:
    return 8 <= level <= 19


# --------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------


class _Grid:
    """Index <-> world mapping of the output grid (SimpleITK convention)."""

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

    def bbox(self, pts: np.ndarray, pad_mm: float = 0.0) -> tuple[slice, slice, slice] | None:
        """(z, y, x) slices of the grid box holding world points ``pts``, or None if outside."""
        idx = self.to_index(pts)
        pad = pad_mm / self.spacing
        lo = np.floor(idx.min(axis=0) - pad).astype(int)
        hi = np.ceil(idx.max(axis=0) + pad).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape_xyz)
        if np.any(hi <= lo):
            return None
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World X, Y, Z (broadcast to the box's [z, y, x] shape) of the voxels in ``sl``."""
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


# --------------------------------------------------------------------------------------------
# Anatomy layout (world mm)
# --------------------------------------------------------------------------------------------


def _bump(z: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """sin-shaped bump: 0 outside [lo, hi], 1 at its middle."""
    t = (np.asarray(z, dtype=np.float64) - lo) / max(hi - lo, 1e-9)
    return np.where((t > 0) & (t < 1), np.sin(np.pi * np.clip(t, 0, 1)), 0.0)


@dataclass
class _Layout:
    """Resolved anatomy: scales, curves and per-level frames in world mm."""

    levels: list[int]
    s_xy: float
    s_z: float
    centre: np.ndarray  # world centre of the grid
    y_c: float  # body centre y
    kyphosis: float
    lordosis: float
    scoliosis: float
    body_jitter: tuple[float, float]
    z_c: dict[int, float]  # centre z of every level C1-L5 (virtual ones too)
    H: dict[int, float]  # scaled body heights
    spans: dict[str, tuple[float, float]]

    # --- curves -------------------------------------------------------------------------
    def sag(self, z):
        lo, hi = self.spans["T"]
        lo2, hi2 = self.spans["L"]
        return self.kyphosis * _bump(z, lo, hi) - self.lordosis * _bump(z, lo2, hi2)

    def scol(self, z):
        lo, hi = self.spans["TL"]
        return self.scoliosis * _bump(z, lo, hi)

    def t_body(self, z):
        lo, hi = self.spans["TL"]
        return np.clip((hi - np.asarray(z, dtype=np.float64)) / (hi - lo), 0.0, 1.0)

    def a(self, z):  # torso half-width
        return self.s_xy * self.body_jitter[0] * (165.0 - 8.0 * self.t_body(z))

    def b(self, z):  # torso anterior half-depth
        return self.s_xy * self.body_jitter[1] * (110.0 + 10.0 * self.t_body(z))

    def b_post(self, z):  # posterior half-depth: the back follows a kyphotic spine
        return self.b(z) + np.maximum(self.sag(z), 0.0)

    def fat(self, z):
        return self.s_xy * (12.0 + 10.0 * self.t_body(z))

    def spine_xy(self, z):
        x = self.centre[0] + self.scol(z)
        y = self.y_c + self.s_xy * (self.b(z) / self.s_xy - 70.0) + self.sag(z)
        return x, y

    def frame(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Body centre and local axes (rows e_x, e_y, e_z) of a vertebra; e_z = tangent."""
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
        return np.array([float(x), float(y), z]), np.stack([ex, ey, ez])


def _layout(p: PhantomParams, grid: _Grid, rng: np.random.Generator) -> _Layout:
    """Draw the random anatomy (fixed number of draws) and fit it into the field of view."""
    u = rng.random(6)
    body_scale = p.body_scale if p.body_scale is not None else 0.9 + 0.2 * u[0]
    kyph = p.kyphosis_mm if p.kyphosis_mm is not None else 12.0 + 18.0 * u[1]
    lord = p.lordosis_mm if p.lordosis_mm is not None else 8.0 + 12.0 * u[2]
    scol = p.scoliosis_mm if p.scoliosis_mm is not None else 10.0 * (2 * u[3] - 1)
    jitter = (0.96 + 0.08 * u[4], 0.96 + 0.08 * u[5])

    levels = level_range(p.first_level, p.last_level)
    all_levels = list(range(1, 25))
    H = {k: _dim("H", k) for k in all_levels}
    disc = {k: _dim("disc", k) for k in all_levels}
    # natural depth of each level's centre below the top of C1
    top, depth = 0.0, {}
    for k in all_levels:
        depth[k] = top + H[k] / 2
        top += H[k] + disc[k]
    first, last = levels[0], levels[-1]
    span_nat = (depth[last] + H[last] / 2) - (depth[first] - H[first] / 2)

    fov = grid.spacing * grid.shape_xyz
    # margins hold the facets / spinous tips beyond the end bodies plus a couple of slices
    margin_z = max(15.0, 2.5 * grid.spacing[2]) + 6.0
    s_z = min(body_scale, (fov[2] - 2 * margin_z) / span_nat)
    margin_xy = max(8.0, grid.spacing[:2].max())
    post = max(kyph, 0.0) + TABLE_THICKNESS_MM
    s_xy = min(
        body_scale,
        (fov[0] - 2 * margin_xy) / (2 * 165.0 * jitter[0]),
        (fov[1] - 2 * margin_xy - post) / (2 * 120.0 * jitter[1]),
    )
    if s_z <= 0.2 or s_xy <= 0.2:
        raise ValueError(
            f"field of view {fov.round(1).tolist()} mm is too small for {p.first_level}-{p.last_level}"
        )
    centre = grid.index_to_world((grid.shape_xyz - 1) / 2.0)[0]
    top_first = depth[first] - H[first] / 2
    z_c = {k: float(centre[2] + s_z * (span_nat / 2 - (depth[k] - top_first))) for k in all_levels}
    Hs = {k: H[k] * s_z for k in all_levels}

    def top_of(k):
        return z_c[k] + Hs[k] / 2

    def bottom_of(k):
        return z_c[k] - Hs[k] / 2

    spans = {
        "T": (bottom_of(19), top_of(8)),
        "L": (bottom_of(24), top_of(20)),
        "TL": (bottom_of(24), top_of(8)),
    }
    # fixed offset (not the drawn kyphosis) so curvature parameters move only the spine
    y_c = float(centre[1] - (20.0 + TABLE_THICKNESS_MM) / 2)
    return _Layout(
        levels=levels,
        s_xy=float(s_xy),
        s_z=float(s_z),
        centre=centre,
        y_c=y_c,
        kyphosis=float(kyph),
        lordosis=float(lord),
        scoliosis=float(scol),
        body_jitter=jitter,
        z_c=z_c,
        H=Hs,
        spans=spans,
    )


# --------------------------------------------------------------------------------------------
# Painting
# --------------------------------------------------------------------------------------------


class _Canvas:
    """The arrays being painted: float HU, tissue classes, labels, metal."""

    def __init__(self, grid: _Grid) -> None:
        self.hu = np.full(grid.shape_zyx, TISSUE_HU[Tissue.AIR], dtype=np.float32)
        self.tissue = np.zeros(grid.shape_zyx, dtype=np.uint8)
        self.labels = np.zeros(grid.shape_zyx, dtype=np.uint8)
        self.metal = np.zeros(grid.shape_zyx, dtype=np.uint8)

    def paint(self, sl, mask: np.ndarray, tissue: Tissue, hu: float | None = None) -> None:
        self.hu[sl][mask] = TISSUE_HU[tissue] if hu is None else hu
        self.tissue[sl][mask] = tissue


def _progress(it, total: int, desc: str, show: bool):
    return tqdm(it, total=total, desc=desc, leave=False, disable=not show, mininterval=1.0)


def _paint_torso(c: _Canvas, grid: _Grid, lay: _Layout, gas: np.ndarray, show: bool) -> None:
    """Table, fat, muscle, liver, gas and lungs, slab by slab (memory stays small)."""
    nz = grid.shape_zyx[0]
    cx = lay.centre[0]
    zs = np.linspace(lay.spans["TL"][0] - 100, lay.spans["TL"][1] + 100, 400)
    table_top = lay.y_c + float(np.max(lay.b_post(zs)))
    z_apex = lay.z_c[8] + lay.H[8] / 2  # lungs only at thoracic levels: T1 top ...
    z_base = lay.z_c[18]  # ... to the T11 centre (plus the diaphragm dome)
    sx = lay.s_xy
    liver_c = (cx - 0.35 * 165 * sx, lay.y_c - 0.05 * 115 * sx, lay.z_c[19] - 10 * lay.s_z)
    axial = bool(np.allclose(grid.m[2, :2], 0.0))
    step = 8
    for k0 in _progress(range(0, nz, step), (nz + step - 1) // step, "phantom torso", show):
        sl = (
            slice(k0, min(k0 + step, nz)),
            slice(0, grid.shape_zyx[1]),
            slice(0, grid.shape_zyx[2]),
        )
        X, Y, Z = grid.coords(sl)
        # profiles depend on z only: on axial grids evaluate them once per slice
        Zp = Z[:, :1, :1] if axial else Z
        a, b, bp, f = lay.a(Zp), lay.b(Zp), lay.b_post(Zp), lay.fat(Zp)
        dx = X - cx
        dy = Y - lay.y_c
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
        liver = ((X - liver_c[0]) / (0.45 * a)) ** 2 + ((Y - liver_c[1]) / (0.6 * b)) ** 2 + (
            (Z - liver_c[2]) / (75 * lay.s_z)
        ) ** 2 <= 1.0
        c.paint(sl, liver & (inner <= 0.8), Tissue.LIVER)
        for gx, gy, gz, gr in gas:
            pocket = (X - gx) ** 2 + (Y - gy) ** 2 + (Z - gz) ** 2 <= gr**2
            c.paint(sl, pocket & (inner <= 0.8), Tissue.GAS)
        if Z.max() < z_base or Z.min() > z_apex:
            continue
        # lungs: two ellipses inside the rib cage, apex taper, diaphragm dome, mediastinum
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
        lungs &= (dx / aw) ** 2 + (dy / bw) ** 2 <= 1.0
        heart = ((X - cx - 0.12 * aw) / (0.32 * aw)) ** 2 + (
            (Y - lay.y_c + 0.3 * bw) / (0.6 * bw)
        ) ** 2
        heart_on = np.clip((lay.z_c[11] - Zp) / (40.0 * lay.s_z), 0.0, 1.0)
        lungs &= ~(heart <= heart_on**2 * 1.0)
        lungs &= np.abs(X - cx) > 12.0 * sx  # mediastinal septum
        lungs &= ((X - sxs) / (34.0 * sx)) ** 2 + ((Y - sys_ - 5 * sx) / (42.0 * sx)) ** 2 > 1.0
        c.paint(sl, lungs, Tissue.LUNG)


def _local(X, Y, Z, centre, axes, s_xy, s_z):
    """Natural-size local coordinates (u left, v posterior, w along the spine)."""
    dx, dy, dz = X - centre[0], Y - centre[1], Z - centre[2]
    u = (dx * axes[0, 0] + dy * axes[0, 1] + dz * axes[0, 2]) / s_xy
    v = (dx * axes[1, 0] + dy * axes[1, 1] + dz * axes[1, 2]) / s_xy
    w = (dx * axes[2, 0] + dy * axes[2, 1] + dz * axes[2, 2]) / s_z
    return u, v, w


def _box_corners(centre, axes, lo, hi, s_xy, s_z) -> np.ndarray:
    """World corners of a natural-size local box."""
    scale = np.array([s_xy, s_xy, s_z])
    pts = []
    for cu in (lo[0], hi[0]):
        for cv in (lo[1], hi[1]):
            for cw in (lo[2], hi[2]):
                pts.append(centre + (np.array([cu, cv, cw]) * scale) @ axes)
    return np.array(pts)


def _capsule(u, v, w, p0, p1, r):
    """Points within r of the segment p0-p1 (all natural local mm)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    L2 = float(d @ d)
    t = ((u - p0[0]) * d[0] + (v - p0[1]) * d[1] + (w - p0[2]) * d[2]) / L2
    t = np.clip(t, 0.0, 1.0)
    return (u - p0[0] - t * d[0]) ** 2 + (v - p0[1] - t * d[1]) ** 2 + (
        w - p0[2] - t * d[2]
    ) ** 2 <= r * r


@dataclass
class _VertGeom:
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

    @classmethod
    def of(cls, level: int) -> _VertGeom:
        H, W, D = _dim("H", level), _dim("W", level), _dim("D", level)
        crx, cry = _dim("canal_rx", level), _dim("canal_ry", level)
        prx = _dim("ped_rx", level)
        return cls(
            level=level,
            H=H,
            W=W,
            D=D,
            crx=crx,
            cry=cry,
            ycn=0.8 * D / 2 + cry,
            lam=_dim("lamina", level),
            prx=prx,
            prz=_dim("ped_rz", level),
            xp=crx + 0.6 * prx,
            zp=0.15 * H,
            sp_len=_dim("sp_len", level),
            sp_ang=math.radians(_dim("sp_angle", level)),
            sp_hx=_dim("sp_hx", level),
            sp_hz=_dim("sp_hz", level),
            tp_len=_dim("tp_len", level),
            tp_r=_dim("tp_r", level),
            tp_ang=math.radians(_dim("tp_angle", level)),
        )

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

    def box(self, extra_w: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Local natural-size bounding box of all parts."""
        tip = self.sp_tip()
        xr = max(self.crx + self.lam + self.tp_len + self.tp_r, self.W / 2) + 3
        lo = np.array([-xr, -self.D / 2 - 3, min(-self.H / 2, tip[2] - self.sp_hz) - 3 - extra_w])
        hi = np.array(
            [
                xr,
                max(tip[1] + self.sp_hz, self.ycn + self.cry + self.lam) + 3,
                self.H / 2 + 3 + extra_w,
            ]
        )
        return lo, hi

    def canal(self, u, v):
        return (u / self.crx) ** 2 + ((v - self.ycn) / self.cry) ** 2 <= 1.0

    def bone(self, u, v, w) -> np.ndarray:
        """Boolean mask of the vertebra's bone at natural local coordinates."""
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
            tps |= _capsule(u, v, w, self.tp_start(side), self.tp_tip(side), self.tp_r)
        bone = body | ped | arch | facet_sup | facet_inf | spin | tps
        return bone & ~self.canal(u, v)


def _shell_mm(grid: _Grid) -> float:
    """Cortical shell thickness: 1.5 mm, but at least one voxel so the cortex exists."""
    return max(1.5, float(grid.spacing.max()))


def _split_cortex(bone: np.ndarray, grid: _Grid, thickness: float) -> np.ndarray:
    """Boolean cortical part of ``bone``: voxels within ``thickness`` mm of its outside."""
    padded = np.pad(bone, 1)
    dist = ndimage.distance_transform_edt(padded, sampling=grid.spacing[::-1])[1:-1, 1:-1, 1:-1]
    return bone & (dist <= thickness + 1e-6)


def _paint_discs_and_canal(c: _Canvas, grid: _Grid, lay: _Layout) -> None:
    """Discs between consecutive chosen levels and the CSF-filled canal (neither labelled)."""
    for i, k in enumerate(lay.levels):
        g = _VertGeom.of(k)
        centre, axes = lay.frame(k)
        ext = _dim("disc", k) / 2 + 2
        corners = _box_corners(
            centre,
            axes,
            [-g.crx - 2, g.ycn - g.cry - 2, -g.H / 2 - ext],
            [g.crx + 2, g.ycn + g.cry + 2, g.H / 2 + ext],
            lay.s_xy,
            lay.s_z,
        )
        sl = grid.bbox(corners, pad_mm=grid.spacing.max())
        if sl is not None:
            u, v, w = _local(*grid.coords(sl), centre, axes, lay.s_xy, lay.s_z)
            canal = g.canal(u, v) & (w >= -g.H / 2 - ext) & (w <= g.H / 2 + ext)
            c.paint(sl, canal, Tissue.CSF)
        if i + 1 >= len(lay.levels):
            continue
        k2 = lay.levels[i + 1]
        c1, a1 = lay.frame(k)
        c2, a2 = lay.frame(k2)
        bot = c1 - a1[2] * lay.H[k] / 2
        top = c2 + a2[2] * lay.H[k2] / 2
        mid = (bot + top) / 2
        ez = bot - top
        height = float(np.linalg.norm(ez))
        ez /= height
        ey = np.array([0.0, 1.0, 0.0]) - ez[1] * ez
        ey /= np.linalg.norm(ey)
        axes = np.stack([np.cross(ey, ez), ey, ez])
        W = (_dim("W", k) + _dim("W", k2)) / 2
        D = (_dim("D", k) + _dim("D", k2)) / 2
        hw = height / lay.s_z / 2 + 2.0
        corners = _box_corners(
            mid, axes, [-W / 2, -D / 2, -hw], [W / 2, D / 2, hw], lay.s_xy, lay.s_z
        )
        sl = grid.bbox(corners, pad_mm=grid.spacing.max())
        if sl is None:
            continue
        u, v, w = _local(*grid.coords(sl), mid, axes, lay.s_xy, lay.s_z)
        disc = (
            ((u / (W / 2)) ** 2 + (v / (D / 2)) ** 2 <= 0.97)
            & (np.abs(w) <= hw)
            & (v <= 0.8 * D / 2)
        )
        c.paint(sl, disc, Tissue.DISC)


def _rib_points(lay: _Layout, level: int, side: float) -> np.ndarray:
    """World polyline of one rib: from the transverse process tip round the chest wall."""
    g = _VertGeom.of(level)
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
    theta0 = math.asin(min(0.95, (abs(tip[0] - cx) + 18.0 * lay.s_xy) / A))
    end = {19: 0.35, 18: 0.5, 17: 0.72, 16: 0.78, 15: 0.8}.get(level, 0.86) * math.pi
    drop = 1.6 * (lay.H[level] + _dim("disc", level) * lay.s_z)
    th = np.linspace(theta0, end, 160)
    frac = (th - theta0) / (end - theta0)
    ring = np.stack(
        [
            cx + side * A * np.sin(th),
            lay.y_c + np.where(np.cos(th) > 0, Bp, Ba) * np.cos(th),
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


def _paint_ribs(c: _Canvas, grid: _Grid, lay: _Layout, rib_hu: np.ndarray) -> None:
    """Ribs at the chosen thoracic levels: tube around the centreline, cortex + marrow."""
    r = max(4.5 * lay.s_xy, 0.75 * float(grid.spacing.max()))
    shell = _shell_mm(grid)
    for k in lay.levels:
        if not _is_thoracic(k):
            continue
        for side in (-1.0, 1.0):
            pts = _rib_points(lay, k, side)
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
            c.paint(sl, rib & free, Tissue.RIB_CORTICAL, float(rib_hu[k - 1, 0]))
            c.paint(sl, marrow, Tissue.RIB_MARROW, float(rib_hu[k - 1, 1]))


def _paint_vertebrae(
    c: _Canvas, grid: _Grid, lay: _Layout, vert_hu: np.ndarray, show: bool
) -> dict:
    """Each vertebra in its own bounding box: label, cortical shell, cancellous core."""
    shell = _shell_mm(grid)
    boxes = {}
    for k in _progress(lay.levels, len(lay.levels), "phantom vertebrae", show):
        g = _VertGeom.of(k)
        centre, axes = lay.frame(k)
        lo, hi = g.box()
        sl = grid.bbox(
            _box_corners(centre, axes, lo, hi, lay.s_xy, lay.s_z), pad_mm=grid.spacing.max()
        )
        if sl is None:
            raise ValueError(f"vertebra {VERSE_NAMES[k]} falls outside the grid")
        u, v, w = _local(*grid.coords(sl), centre, axes, lay.s_xy, lay.s_z)
        bone = g.bone(u, v, w) & (c.labels[sl] == 0)
        cortex = _split_cortex(bone, grid, shell)
        c.paint(sl, bone & ~cortex, Tissue.CANCELLOUS, float(vert_hu[k - 1, 1]))
        c.paint(sl, cortex, Tissue.CORTICAL, float(vert_hu[k - 1, 0]))
        c.labels[sl][bone] = k
        boxes[k] = sl
    return boxes


def _paint_implants(c: _Canvas, grid: _Grid, lay: _Layout, implants: list[str]) -> None:
    """Pedicle screws with tulip heads per side, rods joining consecutive instrumented levels."""
    if not implants:
        return
    rmin = 0.71 * float(grid.spacing.max())  # a line always hits at least one voxel centre
    ids = sorted({VERSE_IDS[n] for n in implants})
    heads: dict[tuple[int, float], np.ndarray] = {}
    scale = np.array([lay.s_xy, lay.s_xy, lay.s_z])
    parts: list[tuple[np.ndarray, np.ndarray, float]] = []  # world segments
    for k in ids:
        g = _VertGeom.of(k)
        centre, axes = lay.frame(k)
        conv = math.radians(10.0 if _is_thoracic(k) else 15.0)
        rs = 2.5 if _is_thoracic(k) else 3.25

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
        if k2 != k + 1:
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
        mask = _capsule(X, Y, Z, p0, p1, r)
        c.paint(sl, mask, Tissue.METAL)
        c.metal[sl][mask] = 1


def _gas_pockets(lay: _Layout, u: np.ndarray) -> np.ndarray:
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


def _noise(shape_zyx: tuple[int, int, int], sigma_hu: float, seed: int, out: np.ndarray) -> None:
    """Add in-plane-correlated Gaussian noise of std ``sigma_hu`` to ``out``, slab by slab."""
    if sigma_hu <= 0:
        return
    rng = np.random.default_rng([seed, 0x4E015E])
    corr = 0.7  # voxels: CT noise is correlated over about a pixel in-plane
    x = np.arange(-4, 5)
    k1 = np.exp(-0.5 * (x / corr) ** 2)
    k1 /= k1.sum()
    gain = float(np.sum(k1**2))  # variance factor per axis of the separable kernel
    scale = sigma_hu / math.sqrt(gain * gain)
    step = 16
    for k0 in range(0, shape_zyx[0], step):
        k1_ = min(k0 + step, shape_zyx[0])
        n = rng.standard_normal((k1_ - k0, *shape_zyx[1:]), dtype=np.float32)
        n = ndimage.correlate1d(n, k1.astype(np.float32), axis=1, mode="wrap")
        n = ndimage.correlate1d(n, k1.astype(np.float32), axis=2, mode="wrap")
        out[k0:k1_] += n * np.float32(scale)


def _centroids(labels: np.ndarray, grid: _Grid, levels: list[int]) -> list[dict]:
    """Centre of mass of each level's label voxels, world mm (LPS), sorted by label."""
    objs = ndimage.find_objects(labels, max_label=max(levels))
    out = []
    for k in levels:
        sl = objs[k - 1]
        if sl is None:
            raise ValueError(f"vertebra {VERSE_NAMES[k]} has no voxels at this resolution")
        kk, jj, ii = np.nonzero(labels[sl] == k)
        idx = np.array([ii.mean() + sl[2].start, jj.mean() + sl[1].start, kk.mean() + sl[0].start])
        x, y, z = grid.index_to_world(idx)[0]
        out.append(
            {"label": int(k), "name": VERSE_NAMES[k], "x": float(x), "y": float(y), "z": float(z)}
        )
    return out


def generate(
    seed: int, params: PhantomParams | dict | None = None, *, progress: bool | None = None
) -> Phantom:
    """Build the phantom for ``seed`` on the grid of ``params`` (see the module docstring).

    ``progress`` shows tqdm bars (default: only for volumes over 8 M voxels).
    """
    p = params if isinstance(params, PhantomParams) else PhantomParams.from_dict(params)
    seed = int(seed)
    direction = p.direction or tuple(np.eye(3).ravel())
    m = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(p.spacing_mm)
    shape = np.asarray(p.shape)
    if p.origin_mm is None:
        origin = -(m @ (spacing * (shape - 1) / 2.0))
        origin = np.where(np.abs(origin) < 1e-9, 0.0, origin)
    else:
        origin = np.asarray(p.origin_mm, dtype=np.float64)
    grid = _Grid(shape, spacing, origin, direction)
    show = bool(progress) if progress is not None else int(np.prod(shape)) > 8_000_000

    rng = np.random.default_rng(seed)
    lay = _layout(p, grid, rng)
    vert_hu = np.stack([rng.uniform(1100, 1400, 24), rng.uniform(210, 290, 24)], axis=1)
    rib_hu = np.stack([rng.uniform(1000, 1300, 24), rng.uniform(200, 300, 24)], axis=1)
    gas = _gas_pockets(lay, rng.random((6, 4)))

    c = _Canvas(grid)
    _paint_torso(c, grid, lay, gas, show)
    _paint_discs_and_canal(c, grid, lay)
    _paint_ribs(c, grid, lay, rib_hu)
    _paint_vertebrae(c, grid, lay, vert_hu, show)
    _paint_implants(c, grid, lay, p.implants)
    centroids = _centroids(c.labels, grid, lay.levels)

    hu = c.hu
    if p.blur_mm > 0:
        sigma = p.blur_mm / spacing[::-1]
        hu = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest", truncate=3.0)
    _noise(grid.shape_zyx, p.noise_hu, seed, hu)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    hu16 = np.rint(hu).astype(np.int16)
    del hu

    info: dict[str, Any] = {
        "seed": seed,
        "body_scale_xy": lay.s_xy,
        "body_scale_z": lay.s_z,
        "kyphosis_mm": lay.kyphosis,
        "lordosis_mm": lay.lordosis,
        "scoliosis_mm": lay.scoliosis,
        "body_centre_y": lay.y_c,
        "level_centres": {VERSE_NAMES[k]: lay.frame(k)[0].tolist() for k in lay.levels},
    }
    return Phantom(
        hu=hu16,
        labels=c.labels,
        metal=c.metal,
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in origin),
        direction=tuple(float(d) for d in direction),
        centroids=centroids,
        tissue=c.tissue,
        info=info,
    )


def centroids_json(centroids: list[dict]) -> str:
    """DESIGN's centroids.json text: sorted by label, mm rounded to 1e-4."""
    rows = [
        {"label": int(r["label"]), "name": r["name"], **{a: round(float(r[a]), 4) for a in "xyz"}}
        for r in sorted(centroids, key=lambda r: r["label"])
    ]
    return json.dumps(rows, indent=2) + "\n"


def write_phantom_case(
    out_dir: Path, seed: int, params: PhantomParams | dict | None = None
) -> None:
    """Write one phantom case as raw data: ``dicom/``, labels, centroids and metal truth.

    The whole ``out_dir`` is written under a temporary name and renamed into place, so a killed
    run never leaves a case that looks complete.
    """
    ph = generate(seed, params)
    with atomic_dir(Path(out_dir)) as tmp:
        write_dicom_series(
            ph.hu,
            ph.spacing,
            ph.origin,
            ph.direction,
            tmp / "dicom",
            seed=seed,
            patient_id=f"PHANTOM{seed}",
        )
        sitk.WriteImage(ph.image("labels"), str(tmp / "labels.nii.gz"), True)
        sitk.WriteImage(ph.image("metal"), str(tmp / "metal_truth.nii.gz"), True)
        (tmp / "centroids.json").write_text(centroids_json(ph.centroids))
