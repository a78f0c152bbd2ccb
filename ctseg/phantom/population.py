"""A phantom population: per-case parameters drawn from configured ranges, seeded per case.

Real cohorts differ from one scan to the next in exactly the ways a model must survive: which
part of the spine is in the field of view, body size, voxel size, stored orientation, spinal
curvature, dose and sharpness, implants, transitional anatomy. :func:`sample_case` draws all of
them for one case from :class:`PopulationParams` (config ``phantom: {population: {...}}``), so a
cohort is ``[sample_case(pop, seed + i) for i in range(n)]`` and each case is reproducible from
its seed alone.

The field of view is a run of consecutive levels (``min_levels`` up to the whole ``levels``
pool): a window of uniform length placed uniformly so that it may hang over either end of the
pool, then clipped to it (at least ``min_levels`` kept), so the ends of the spine are seen as
often as its middle. Its z edges are drawn inside the neighbouring
levels, cutting at most about a quarter of a neighbour, so the run's levels are visible (more
than half of their voxels inside) and the cut neighbours are not; the generator counts the
voxels and is the final word (``Phantom.info['visible']``, centroids.json). The in-plane field
of view is square, the body plus an air margin.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ctseg.core.config import check_keys
from ctseg.core.errors import ConfigError
from ctseg.phantom.layout import make_layout
from ctseg.phantom.orientation import ORIENTATIONS
from ctseg.phantom.params import (
    L6,
    SACRUM,
    TABLE_THICKNESS_MM,
    TRANSITIONAL,
    PhantomParams,
    level_id,
    level_name,
    spine_ids,
)

Range = tuple[float, float]

_RANGES = (
    "body_scale",
    "spacing_inplane_mm",
    "spacing_slice_mm",
    "kyphosis_mm",
    "lordosis_mm",
    "scoliosis_mm",
    "cervical_lordosis_mm",
    "noise_hu",
    "blur_mm",
    "margin_mm",
    "implant_levels",
)
#: Physical limits of each range (inclusive).
_LIMITS: dict[str, Range] = {
    "body_scale": (0.3, 2.0),
    "spacing_inplane_mm": (0.1, 20.0),
    "spacing_slice_mm": (0.1, 20.0),
    "kyphosis_mm": (-20.0, 80.0),
    "lordosis_mm": (-20.0, 80.0),
    "scoliosis_mm": (-60.0, 60.0),
    "cervical_lordosis_mm": (-20.0, 40.0),
    "noise_hu": (0.0, 500.0),
    "blur_mm": (0.0, 10.0),
    "margin_mm": (0.0, 300.0),
    "implant_levels": (1, 10),
}


@dataclass
class PopulationParams:
    """Ranges ``[lo, hi]`` (uniform draws) and rates of the phantom population."""

    levels: tuple[str, str] = ("C1", "L5")  # pool the field of view's run is drawn from
    min_levels: int = 5
    max_levels: int | None = None  # None: up to the whole pool
    body_scale: Range = (0.75, 1.3)
    spacing_inplane_mm: Range = (0.8, 4.0)
    spacing_slice_mm: Range = (1.0, 5.0)
    min_spacing_mm: tuple[float, float, float] | None = None  # coarsest-grid floor (x, y, z)
    max_voxels: int | None = 100_000_000  # coarsen the drawn spacing until the grid fits
    orientations: tuple[str, ...] = ORIENTATIONS
    kyphosis_mm: Range = (10.0, 45.0)
    lordosis_mm: Range = (5.0, 35.0)
    scoliosis_mm: Range = (-30.0, 30.0)
    cervical_lordosis_mm: Range = (0.0, 15.0)
    noise_hu: Range = (10.0, 80.0)
    blur_mm: Range = (0.3, 1.5)
    implant_rate: float = 0.15  # share of cases with pedicle screws
    implant_levels: Range = (1, 4)  # how many consecutive levels get screws
    transitional_rate: float = 0.1  # share of cases with transitional anatomy
    transitional_kinds: tuple[str, ...] = ("L6", "T13", "T12_no_ribs")
    margin_mm: Range = (10.0, 50.0)  # air around the body in the in-plane field of view

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ConfigError naming the key for empty, inverted or out-of-limit ranges and rates."""
        for key in _RANGES:
            lo, hi = _range(key, getattr(self, key))
            lim = _LIMITS[key]
            if lo < lim[0] or hi > lim[1]:
                raise ConfigError(
                    f"phantom population {key}: [{lo}, {hi}] outside the limits {list(lim)}"
                )
            setattr(self, key, (lo, hi))
        lo, hi = self.implant_levels
        if lo != int(lo) or hi != int(hi):
            raise ConfigError("phantom population implant_levels: counts must be integers")
        if not isinstance(self.levels, list | tuple) or len(self.levels) != 2:
            raise ConfigError(f"phantom population levels: need [first, last], got {self.levels!r}")
        try:
            a, b = (level_id(v) for v in self.levels)
        except ValueError as exc:
            raise ConfigError(f"phantom population levels: {exc}") from exc
        order = spine_ids()
        if a not in order or b not in order or order.index(a) > order.index(b):
            raise ConfigError(
                f"phantom population levels: {list(self.levels)} is not a run from top to bottom"
            )
        self.levels = (str(self.levels[0]), str(self.levels[1]))
        pool = order.index(b) - order.index(a) + 1
        if not 1 <= int(self.min_levels) <= pool:
            raise ConfigError(
                f"phantom population min_levels: {self.min_levels} not in 1..{pool} "
                f"(the pool {self.levels[0]}-{self.levels[1]})"
            )
        if self.max_levels is not None and int(self.max_levels) < int(self.min_levels):
            raise ConfigError(
                f"phantom population max_levels: {self.max_levels} < min_levels {self.min_levels}"
            )
        for key in ("implant_rate", "transitional_rate"):
            if not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise ConfigError(f"phantom population {key}: {getattr(self, key)} not in [0, 1]")
        self.orientations = tuple(str(o).upper() for o in self.orientations)
        bad = [o for o in self.orientations if o not in ORIENTATIONS]
        if bad or not self.orientations:
            raise ConfigError(f"phantom population orientations: unknown or none {bad}")
        self.transitional_kinds = tuple(self.transitional_kinds)
        bad = [t for t in self.transitional_kinds if t not in TRANSITIONAL or t == "none"]
        if bad or (self.transitional_rate > 0 and not self.transitional_kinds):
            raise ConfigError(f"phantom population transitional_kinds: unknown or none {bad}")
        if self.min_spacing_mm is not None:
            v = tuple(float(s) for s in self.min_spacing_mm)
            if len(v) != 3 or min(v) <= 0:
                raise ConfigError("phantom population min_spacing_mm: need 3 positive values")
            self.min_spacing_mm = v
        if self.max_voxels is not None and int(self.max_voxels) < 64:
            raise ConfigError(f"phantom population max_voxels: {self.max_voxels} < 64")

    @classmethod
    def from_dict(cls, d: dict | None) -> PopulationParams:
        """Build from config; unknown keys raise ConfigError naming them."""
        d = dict(d or {})
        check_keys(cls, d, "phantom population")
        return cls(**d)


def _range(key: str, value) -> Range:
    if not isinstance(value, list | tuple) or len(value) == 0:
        raise ConfigError(f"phantom population {key}: empty range {value!r}, need [lo, hi]")
    if len(value) != 2:
        raise ConfigError(f"phantom population {key}: need [lo, hi], got {value!r}")
    try:
        lo, hi = float(value[0]), float(value[1])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"phantom population {key}: non-numeric range {value!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ConfigError(f"phantom population {key}: inverted or empty range [{lo}, {hi}]")
    return lo, hi


def pool_of(pop: PopulationParams, transitional: str) -> list[int]:
    """Levels a run may use in a spine with this transitional anatomy (L6 joins an L5 pool)."""
    seq = spine_ids(transitional)
    a, b = level_id(pop.levels[0]), level_id(pop.levels[1])
    j = seq.index(b)
    if b == 24 and L6 in seq:
        j += 1
    return seq[seq.index(a) : j + 1]


def sample_case(population: PopulationParams | dict, seed: int) -> PhantomParams:
    """Draw one case's PhantomParams, deterministically from ``seed``.

    The result has ``fit=False`` and an explicit grid (shape, spacing, origin), so it is
    complete: ``generate(seed, sample_case(pop, seed))`` is the case.
    """
    pop = (
        population
        if isinstance(population, PopulationParams)
        else PopulationParams.from_dict(population)
    )
    rng = np.random.default_rng([int(seed), 0x9097])

    def uni(r: Range) -> float:
        return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])

    transitional = "none"
    if rng.random() < pop.transitional_rate:
        transitional = str(pop.transitional_kinds[rng.integers(len(pop.transitional_kinds))])
    pool = pool_of(pop, transitional)
    longest = len(pool) if pop.max_levels is None else min(len(pool), int(pop.max_levels))
    shortest = min(int(pop.min_levels), longest)
    n = int(rng.integers(shortest, longest + 1))
    # the window may hang over either end of the pool and is clipped there (never below
    # `shortest` levels): a window placed only inside the pool shows the middle of the spine
    # far more often than its ends (measured on the default cohort: the sacrum in 2 of 20
    # training cases, T7 in 18), and what a model never sees it cannot name
    start = int(rng.integers(shortest - n, len(pool) - shortest + 1))
    run = pool[max(start, 0) : min(start + n, len(pool))]

    body = uni(pop.body_scale)
    params = {
        "first_level": level_name(run[0]),
        "last_level": level_name(run[-1]),
        "body_scale": body,
        "kyphosis_mm": uni(pop.kyphosis_mm),
        "lordosis_mm": uni(pop.lordosis_mm),
        "scoliosis_mm": uni(pop.scoliosis_mm),
        "cervical_lordosis_mm": uni(pop.cervical_lordosis_mm),
        "noise_hu": uni(pop.noise_hu),
        "blur_mm": uni(pop.blur_mm),
        "transitional": transitional,
        "orientation": str(pop.orientations[rng.integers(len(pop.orientations))]),
        "fit": False,
    }
    implants: list[str] = []
    if rng.random() < pop.implant_rate:
        ok = [k for k in run if k not in (1, 2, SACRUM)]
        if ok:
            m = min(len(ok), int(rng.integers(pop.implant_levels[0], pop.implant_levels[1] + 1)))
            i0 = int(rng.integers(0, len(ok) - m + 1))
            implants = [level_name(k) for k in ok[i0 : i0 + m]]
    params["implants"] = implants
    sxy, sz = uni(pop.spacing_inplane_mm), uni(pop.spacing_slice_mm)
    margin = uni(pop.margin_mm)
    cut_top, cut_bottom = rng.random(2)
    spacing = np.array([sxy, sxy, sz])
    if pop.min_spacing_mm is not None:
        spacing = np.maximum(spacing, pop.min_spacing_mm)
    params["spacing_mm"] = tuple(float(v) for v in spacing)
    return crop_to_run(
        PhantomParams(**params),
        cut_top=float(cut_top),
        cut_bottom=float(cut_bottom),
        margin_mm=margin,
        max_voxels=pop.max_voxels,
    )


def crop_to_run(
    params: PhantomParams,
    *,
    cut_top: float = 0.5,
    cut_bottom: float = 0.5,
    margin_mm: float = 30.0,
    max_voxels: int | None = None,
) -> PhantomParams:
    """The same case on a grid cropped in z to its run ``first_level``-``last_level``.

    The z edges fall between the run's end levels and the middle of their neighbours:
    ``cut_top`` / ``cut_bottom`` in [0, 1] go from just past the end level (0) to deepest into
    the neighbour (1), which still leaves the neighbour less than half visible. In-plane the
    grid is a square holding the body plus ``margin_mm``. ``params.spacing_mm`` is kept unless
    ``max_voxels`` forces all three spacings up by one factor. The result has ``fit=False``
    and explicit values for body scale and curvature (those left to the seed become the
    mid-range values).
    """
    p = dataclasses.replace(params, fit=False, origin_mm=None)
    lay = make_layout(p, np.full(7, 0.5))
    run, seq, s = p.levels, lay.seq, lay.s_z
    i, j = seq.index(run[0]), seq.index(run[-1])
    lo_first, hi_first = lay.z_extent(run[0])
    lo_last, hi_last = lay.z_extent(run[-1])
    if i == 0:
        z_hi = hi_first + (3.0 + 37.0 * cut_top) * s
    else:
        up = seq[i - 1]
        a, b = hi_first + 0.2 * (hi_first - lo_first) + 1.0, lay.z_c[up] - 0.3 * lay.H[up]
        z_hi = a + cut_top * max(b - a, 0.0)
    if run[-1] == SACRUM:
        z_lo = lo_last - (5.0 + 25.0 * cut_bottom) * s
    else:
        down = seq[j + 1]
        if down == SACRUM:
            a = lay.z_extent(SACRUM)[1] - 4.0 * s
        else:
            a = lay.z_c[down] + 0.35 * lay.H[down]
        b = lo_last - 0.2 * (hi_last - lo_last) - 1.0
        z_lo = b - cut_bottom * max(b - a, 0.0)
    # in-plane: square, the trunk (+4 % jitter), the table and the kyphotic back, plus margin
    half_w = 1.04 * 165.0 * lay.s_xy
    y_front = lay.y_c - 1.04 * 120.0 * lay.s_xy
    y_back = lay.y_c + 1.04 * 120.0 * lay.s_xy + max(lay.kyphosis, 0.0) + TABLE_THICKNESS_MM
    side = max(2 * half_w, y_back - y_front) + 2 * margin_mm
    extent = np.array([side, side, z_hi - z_lo])
    spacing = np.asarray(p.spacing_mm, dtype=np.float64)

    def shape_for(sp):
        # in-plane: cover the square; z: voxel centres stay inside [z_lo, z_hi]
        n = np.ceil(extent / sp).astype(int) + 1
        n[2] = int(np.floor(extent[2] / sp[2])) + 1
        return np.maximum(n, 4)

    shape = shape_for(spacing)
    if max_voxels is not None:
        while int(np.prod(shape)) > int(max_voxels):
            spacing = spacing * max(1.01, (np.prod(shape) / max_voxels) ** (1 / 3))
            shape = shape_for(spacing)
    y_mid = (y_front + y_back) / 2
    origin = np.array(
        [
            -(shape[0] - 1) * spacing[0] / 2,
            y_mid - (shape[1] - 1) * spacing[1] / 2,
            (z_lo + z_hi) / 2 - (shape[2] - 1) * spacing[2] / 2,
        ]
    )
    return dataclasses.replace(
        p,
        body_scale=lay.s_xy,  # drawn values (None) resolved, so the crop fits the anatomy
        kyphosis_mm=lay.kyphosis,
        lordosis_mm=lay.lordosis,
        scoliosis_mm=lay.scoliosis,
        cervical_lordosis_mm=lay.cervical,
        shape=tuple(int(v) for v in shape),
        spacing_mm=tuple(round(float(v), 4) for v in spacing),
        origin_mm=tuple(round(float(v), 4) for v in origin),
    )


def case_params(phantom: dict | None, case: str, seed: int, family: str = "") -> dict:
    """The phantom parameters of one case-sheet row, from the config's ``phantom`` section.

    Without ``population`` the section holds fixed :class:`PhantomParams` keys (the original
    cohort; ``implants`` may map case -> levels). With ``population``, the case is drawn from it
    by :func:`sample_case` with the row's seed; a row's ``family`` (the robustness suite's named
    variations) names an entry of ``families`` whose keys override population keys, e.g.
    ``{orientations: [PIL]}`` or ``{body_scale: [0.75, 0.75]}``.
    """
    cfg = dict(phantom or {})
    population = cfg.pop("population", None)
    families = cfg.pop("families", None) or {}
    implants = cfg.pop("implants", None)
    if population is None:
        if family:
            raise ConfigError(
                f"case {case!r}: family {family!r} needs phantom.population and phantom.families"
            )
        cfg["implants"] = (
            list((implants or {}).get(case, []))
            if isinstance(implants, dict)
            else list(implants or [])
        )
        return cfg
    if cfg:
        raise ConfigError(
            f"phantom: with 'population', only 'families' and 'implants' may sit beside it, "
            f"not {', '.join(sorted(cfg))}"
        )
    overrides = {}
    if family:
        if family not in families:
            raise ConfigError(
                f"case {case!r}: unknown family {family!r}; phantom.families has "
                f"{', '.join(sorted(families)) or 'none'}"
            )
        overrides = dict(families[family] or {})
    params = sample_case(
        PopulationParams.from_dict({**population, **overrides}), int(seed)
    ).to_dict()
    if isinstance(implants, dict):
        implants = implants.get(case)
    if implants:  # levels given for this case replace the drawn ones
        params["implants"] = list(implants)
    return params
