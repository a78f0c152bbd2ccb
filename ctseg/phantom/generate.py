"""Build one phantom: lay the anatomy out, paint it, decide visibility, blur, noise, reorient."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ctseg.core.centroids import label_centres
from ctseg.core.labels import VERSE_NAMES
from ctseg.phantom.grid import Grid
from ctseg.phantom.implants import paint_implants
from ctseg.phantom.layout import Layout, make_layout
from ctseg.phantom.orientation import reorient
from ctseg.phantom.paint import Canvas
from ctseg.phantom.params import HU_MAX, HU_MIN, SACRUM, PhantomParams
from ctseg.phantom.skeleton import (
    describe,
    paint_discs_and_canal,
    paint_pelvis,
    paint_ribs,
    paint_vertebrae,
    visible_levels,
)
from ctseg.phantom.torso import gas_pockets, paint_torso


@dataclass
class Phantom:
    """A generated phantom: arrays ``[z, y, x]`` plus SimpleITK geometry and the truth.

    Arrays and geometry are as stored (after ``orientation``); world positions do not depend
    on the orientation.
    """

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


def centroids_of(labels: np.ndarray, grid: Grid, levels: list[int]) -> list[dict]:
    """Centre of mass of each level's label voxels, world mm (LPS), in spine order.

    For a partially visible level this is the centre of its visible part (what the label map
    shows), as in VerSe's own centroid files.
    """
    centres = label_centres(labels, levels)
    out = []
    for k in levels:
        if k not in centres:
            raise ValueError(f"vertebra {VERSE_NAMES[k]} has no voxels at this resolution")
        x, y, z = grid.index_to_world(centres[k])[0]
        out.append(
            {"label": int(k), "name": VERSE_NAMES[k], "x": float(x), "y": float(y), "z": float(z)}
        )
    return sorted(out, key=lambda r: r["label"])


def run_centre(lay: Layout) -> np.ndarray:
    """World point midway between the top of the run's first and bottom of its last level."""
    lo = lay.z_extent(lay.levels[-1])[0]
    hi = lay.z_extent(lay.levels[0])[1]
    return np.array([lay.centre[0], lay.centre[1], (lo + hi) / 2])


def _per_level(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, 28)


def _grid_and_layout(p: PhantomParams, u: np.ndarray) -> tuple[Grid, Layout]:
    """The canonical grid and the resolved anatomy (fit: anatomy follows the grid; else v.v.)."""
    direction = p.direction or tuple(np.eye(3).ravel())
    m = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(p.spacing_mm)
    shape = np.asarray(p.shape)

    def grid_at(centre: np.ndarray) -> Grid:
        if p.origin_mm is not None:
            origin = np.asarray(p.origin_mm, dtype=np.float64)
        else:
            origin = centre - (m @ (spacing * (shape - 1) / 2.0))
            origin = np.where(np.abs(origin) < 1e-9, 0.0, origin)
        return Grid(shape, spacing, origin, direction)

    if p.fit:
        grid = grid_at(np.zeros(3))
        centre = grid.index_to_world((grid.shape_xyz - 1) / 2.0)[0]
        lay = make_layout(p, u, fov_mm=spacing * shape, centre=centre, spacing=spacing)
        return grid, lay
    lay = make_layout(p, u)
    return grid_at(run_centre(lay)), lay


def layout_of(seed: int, params: PhantomParams | dict | None = None) -> Layout:
    """The anatomy :func:`generate` lays out for ``seed`` (level frames, extents, curves)."""
    p = params if isinstance(params, PhantomParams) else PhantomParams.from_dict(params)
    return _grid_and_layout(p, np.random.default_rng(int(seed)).random(7))[1]


def generate(
    seed: int, params: PhantomParams | dict | None = None, *, progress: bool | None = None
) -> Phantom:
    """Build the phantom for ``seed`` on the grid of ``params`` (see the package docstring).

    ``progress`` shows tqdm bars (default: only for volumes over 8 M voxels).
    """
    p = params if isinstance(params, PhantomParams) else PhantomParams.from_dict(params)
    seed = int(seed)
    spacing = np.asarray(p.spacing_mm)
    direction = p.direction or tuple(np.eye(3).ravel())
    show = bool(progress) if progress is not None else int(np.prod(p.shape)) > 8_000_000
    rng = np.random.default_rng(seed)
    grid, lay = _grid_and_layout(p, rng.random(7))

    vh = np.stack([_per_level(rng, 1100, 1400), _per_level(rng, 210, 290)], axis=1)
    rh = np.stack([_per_level(rng, 1000, 1300), _per_level(rng, 200, 300)], axis=1)
    vert_hu = {k: (float(vh[k - 1, 0]), float(vh[k - 1, 1])) for k in lay.seq}
    rib_hu = {k: (float(rh[k - 1, 0]), float(rh[k - 1, 1])) for k in lay.seq}
    gas = gas_pockets(lay, rng.random((6, 4)))

    c = Canvas(grid)
    paint_torso(c, grid, lay, gas, show)
    paint_discs_and_canal(c, grid, lay)
    paint_ribs(c, grid, lay, rib_hu)
    paint_pelvis(c, grid, lay)
    frac = paint_vertebrae(c, grid, lay, vert_hu, show)
    visible = visible_levels(frac, lay.seq)
    hidden = [k for k in frac if k not in visible]
    if hidden:  # partly seen levels stay bone but carry no label
        lut = np.arange(256, dtype=np.uint8)
        lut[hidden] = 0
        c.labels = lut[c.labels]
    paint_implants(c, grid, lay, p.implants)
    centroids = centroids_of(c.labels, grid, visible)

    hu = c.hu
    if p.blur_mm > 0:
        sigma = p.blur_mm / spacing[::-1]
        hu = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest", truncate=3.0)
    _noise(grid.shape_zyx, p.noise_hu, seed, hu)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    hu16 = np.rint(hu).astype(np.int16)
    del hu

    arrays = {"hu": hu16, "labels": c.labels, "metal": c.metal, "tissue": c.tissue}
    geom = (
        tuple(spacing.tolist()),
        tuple(grid.origin.tolist()),
        tuple(float(d) for d in direction),
    )
    if p.orientation != "LPS":
        for key in arrays:
            arrays[key], *g = reorient(arrays[key], p.orientation, *geom[:2], direction)
        geom = tuple(g)
    info: dict[str, Any] = {
        "seed": seed,
        "body_scale_xy": lay.s_xy,
        "body_scale_z": lay.s_z,
        "kyphosis_mm": lay.kyphosis,
        "lordosis_mm": lay.lordosis,
        "scoliosis_mm": lay.scoliosis,
        "cervical_lordosis_mm": lay.cervical,
        "body_centre_y": lay.y_c,
        "transitional": p.transitional,
        "orientation": p.orientation,
        "spine": [VERSE_NAMES[k] for k in lay.seq],
        "visible": [VERSE_NAMES[k] for k in visible],
        "visible_fraction": describe(frac),
        "rib_levels": [VERSE_NAMES[k] for k in lay.rib_levels()],
        "level_centres": lay.level_centres(),
        "sacrum_axis": (-lay.frame(SACRUM)[1][2]).tolist(),
    }
    return Phantom(
        hu=arrays["hu"],
        labels=arrays["labels"],
        metal=arrays["metal"],
        spacing=tuple(float(s) for s in geom[0]),
        origin=tuple(float(o) for o in geom[1]),
        direction=tuple(float(d) for d in geom[2]),
        centroids=centroids,
        tissue=arrays["tissue"],
        info=info,
    )
