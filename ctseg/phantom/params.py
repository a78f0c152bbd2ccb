"""Phantom parameters, tissue classes and the spine's level sequence.

Everything that shapes one phantom besides its seed lives in :class:`PhantomParams`; the level
sequence (C1 ... sacrum, with an optional transitional level) is here too because parameter
validation needs it (a field of view must be a run of levels that exist in this spine).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from ctseg.core.config import check_keys
from ctseg.core.labels import VERSE_IDS, VERSE_NAMES
from ctseg.phantom.orientation import ORIENTATIONS


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
    CORTICAL = 9  # vertebral (labelled when the level is visible)
    CANCELLOUS = 10
    RIB_CORTICAL = 11
    RIB_MARROW = 12
    METAL = 13
    BONE_CORTICAL = 14  # pelvis and skull: bone that is never a vertebra label
    BONE_MARROW = 15
    BRAIN = 16


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
    Tissue.BONE_CORTICAL: 1200.0,
    Tissue.BONE_MARROW: 250.0,
    Tissue.BRAIN: 35.0,
}
TABLE_SHELL_HU = 150.0
TABLE_CORE_HU = -500.0
TABLE_THICKNESS_MM = 16.0
TABLE_SHELL_MM = 3.0
HU_MIN, HU_MAX = -1024, 32767

TRANSITIONAL = ("none", "L6", "T13", "T12_no_ribs")
SACRUM = 26
T13 = 28
L6 = 25
#: Level names accepted for first_level / last_level besides the VerSe names.
LEVEL_ALIASES = {"S": "sacrum", "S1": "sacrum", "SACRUM": "sacrum"}


def spine_ids(transitional: str = "none") -> list[int]:
    """VerSe ids of the spine from C1 down to the sacrum (T13 / L6 where transitional)."""
    ids = list(range(1, 20))
    if transitional == "T13":
        ids.append(T13)
    ids += list(range(20, 25))
    if transitional == "L6":
        ids.append(L6)
    return [*ids, SACRUM]


def level_id(name: str) -> int:
    """VerSe id of a level name (C1..C7, T1..T13, L1..L6, S / sacrum); ValueError otherwise."""
    key = LEVEL_ALIASES.get(str(name).upper(), str(name))
    if key not in VERSE_IDS:
        raise ValueError(f"unknown level {name!r} (use C1-C7, T1-T13, L1-L6 or S)")
    return VERSE_IDS[key]


def is_thoracic(k: int) -> bool:
    return 8 <= k <= 19 or k == T13


def run_of_levels(first: str, last: str, transitional: str = "none") -> list[int]:
    """VerSe ids from ``first`` down to ``last`` in this spine; ValueError if not a run."""
    ids = spine_ids(transitional)
    a, b = level_id(first), level_id(last)
    for name, k in ((first, a), (last, b)):
        if k not in ids:
            raise ValueError(
                f"level {name!r} does not exist in a spine with transitional={transitional!r}"
            )
    if ids.index(a) > ids.index(b):
        raise ValueError(f"invalid level range {first}-{last}: {first} lies below {last}")
    return ids[ids.index(a) : ids.index(b) + 1]


@dataclass
class PhantomParams:
    """Everything that shapes a phantom besides the seed (None = drawn from the seed).

    Grid fields (``shape``, ``spacing_mm``, ``origin_mm``, ``direction``) describe the canonical
    grid, whose index axes run along ``direction`` (identity: +x left, +y posterior, +z superior).
    ``orientation`` then permutes / flips the stored axes (e.g. ``'RAS'``, ``'PIL'``) without
    resampling, so the world image is the same for all 48 codes.

    ``fit`` (the old behaviour, default) centres the run ``first_level``-``last_level`` in the
    grid and shrinks the anatomy when the run does not fit; ``fit=False`` keeps the anatomy at
    ``body_scale`` in fixed world coordinates (top of C1 at z = 0, body centre x = 0) and the
    grid crops it, which is how :func:`ctseg.phantom.population.sample_case` makes partial
    fields of view.
    """

    shape: tuple[int, int, int] = (96, 80, 112)  # x, y, z voxels
    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 4.0)
    first_level: str = "T1"
    last_level: str = "L5"
    kyphosis_mm: float | None = None  # peak posterior displacement over the thoracic spine
    lordosis_mm: float | None = None  # peak anterior displacement over the lumbar spine
    scoliosis_mm: float | None = None  # peak displacement to the patient's left over T1-L5
    cervical_lordosis_mm: float | None = None  # peak anterior displacement over C1-C7
    body_scale: float | None = None  # natural adult size x this (0.9-1.1 when drawn)
    implants: list[str] = field(default_factory=list)  # vertebrae with pedicle screws
    noise_hu: float = 20.0
    blur_mm: float = 1.0  # Gaussian PSF sigma in mm
    origin_mm: tuple[float, float, float] | None = None  # None: grid centred on the run
    direction: tuple[float, ...] | None = None  # 9 cosines, row-major (SimpleITK); None = I
    orientation: str = "LPS"  # stored axis code, one of the 48 (LPS = canonical)
    transitional: str = "none"  # none | L6 | T13 | T12_no_ribs
    fit: bool = True

    def __post_init__(self) -> None:
        self.shape = tuple(int(v) for v in self.shape)
        self.spacing_mm = tuple(float(v) for v in self.spacing_mm)
        self.implants = [str(v) for v in (self.implants or [])]
        self.first_level, self.last_level = str(self.first_level), str(self.last_level)
        self.orientation = str(self.orientation).upper()
        if self.origin_mm is not None:
            self.origin_mm = tuple(float(v) for v in self.origin_mm)
        if self.direction is not None:
            self.direction = tuple(float(v) for v in np.asarray(self.direction).ravel())
        self.validate()

    @property
    def levels(self) -> list[int]:
        """VerSe ids of the run first_level..last_level (the field of view's levels)."""
        return run_of_levels(self.first_level, self.last_level, self.transitional)

    def validate(self) -> None:
        """Raise ValueError for parameters that cannot make a phantom."""
        if len(self.shape) != 3 or min(self.shape) < 4:
            raise ValueError(f"shape must be 3 sizes >= 4 voxels, got {self.shape}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be 3 positive values, got {self.spacing_mm}")
        if self.transitional not in TRANSITIONAL:
            raise ValueError(
                f"transitional {self.transitional!r} is not one of {', '.join(TRANSITIONAL)}"
            )
        if self.orientation not in ORIENTATIONS:
            raise ValueError(
                f"orientation {self.orientation!r} is not an axis code such as LPS, RAS or PIL"
            )
        levels = self.levels
        bad = []
        for v in self.implants:
            try:
                k = level_id(v)
            except ValueError:
                bad.append(v)
                continue
            if k not in levels or k in (1, 2, SACRUM):
                bad.append(v)
        if bad:
            raise ValueError(
                f"implant levels {bad} are outside {self.first_level}-{self.last_level} "
                "(or C1, C2, sacrum, which take no pedicle screws)"
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
        if self.scoliosis_mm is not None and abs(self.scoliosis_mm) > 60:
            raise ValueError(f"scoliosis_mm {self.scoliosis_mm} outside -60..60")

    @classmethod
    def from_dict(cls, d: dict | None) -> PhantomParams:
        """Build from config (YAML lists welcome); unknown keys raise ValueError naming them."""
        d = dict(d or {})
        check_keys(cls, d, "phantom", error=ValueError)
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain (YAML / JSON friendly) dict that :meth:`from_dict` turns back into these params."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out


def level_name(k: int) -> str:
    return VERSE_NAMES[k]
