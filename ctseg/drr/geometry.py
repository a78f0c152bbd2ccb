"""Cone-beam DRR geometry: views, detector pixels and volume index transforms.

The geometry is a contract shared by the renderer, the label projection, the tests and anyone
who maps world points (e.g. vertebra centroids) onto a DRR, so it lives in one place.

World = DICOM patient coordinates (LPS, mm). The isocentre ``c`` is the centre of the volume
(continuous index ``(size-1)/2`` mapped to world) unless the view gives ``isocenter_mm``. At
gantry angle ``t`` (degrees, about the patient's long axis):

* source            ``s = c + sid * n``, with ``n = (sin t, -cos t, 0)`` (t = 0: anterior, AP;
  t = 90: the patient's left),
* detector centre   ``d = c - (sdd - sid) * n``,
* column direction  ``u = (cos t, sin t, 0)`` (t = 0: column 0 is the patient's right),
* row direction     ``v = (0, 0, -1)`` (row 0 is superior),
* pixel ``(r, k)`` centre ``= d + (k - (cols-1)/2) * sp_col * u + (r - (rows-1)/2) * sp_row * v``.

Arrays are indexed ``[row, col]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ctseg.core.errors import InputError


@dataclass(frozen=True)
class View:
    """One radiographic view; ``size_px`` and ``spacing_mm`` are ``(cols, rows)``."""

    name: str
    angle_deg: float
    sdd_mm: float
    sid_mm: float
    size_px: tuple[int, int]
    spacing_mm: tuple[float, float]
    isocenter_mm: tuple[float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def cols(self) -> int:
        return self.size_px[0]

    @property
    def rows(self) -> int:
        return self.size_px[1]

    @classmethod
    def from_dict(cls, view: Mapping[str, Any] | View) -> View:
        """Parse a config view dict, accepting scalars for square detectors.

        Raises InputError for impossible geometry (the source inside the detector plane or the
        isocentre behind the source) because those produce silently meaningless images.
        """
        if isinstance(view, View):
            return view
        known = {"name", "angle_deg", "sdd_mm", "sid_mm", "size_px", "spacing_mm", "isocenter_mm"}
        try:
            size = view["size_px"]
            spacing = view["spacing_mm"]
            size_t = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
            sp_t = (
                (float(spacing), float(spacing))
                if np.isscalar(spacing)
                else tuple(float(s) for s in spacing)
            )
            iso = view.get("isocenter_mm")
            out = cls(
                name=str(view.get("name", "view")),
                angle_deg=float(view.get("angle_deg", 0.0)),
                sdd_mm=float(view["sdd_mm"]),
                sid_mm=float(view["sid_mm"]),
                size_px=size_t,  # type: ignore[arg-type]
                spacing_mm=sp_t,  # type: ignore[arg-type]
                isocenter_mm=None if iso is None else tuple(float(x) for x in iso),  # type: ignore[arg-type]
                extra={k: v for k, v in view.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"invalid DRR view {dict(view)!r}: {exc}") from exc
        if len(out.size_px) != 2 or len(out.spacing_mm) != 2:
            raise InputError(f"view {out.name!r}: size_px and spacing_mm need 1 or 2 values")
        if min(out.size_px) < 1 or min(out.spacing_mm) <= 0:
            raise InputError(f"view {out.name!r}: size_px and spacing_mm must be positive")
        if not (0 < out.sid_mm < out.sdd_mm):
            raise InputError(f"view {out.name!r}: need 0 < sid_mm < sdd_mm")
        return out


@dataclass(frozen=True)
class VolumeGeometry:
    """Index <-> world mapping of a volume (SimpleITK conventions, sizes in x, y, z order)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major

    @classmethod
    def from_image(cls, image: sitk.Image) -> VolumeGeometry:
        if image.GetDimension() != 3:
            raise InputError(f"expected a 3D volume, got {image.GetDimension()}D")
        return cls(
            size=tuple(int(s) for s in image.GetSize()),  # type: ignore[arg-type]
            spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(s) for s in image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(s) for s in image.GetDirection()),
        )

    @property
    def matrix(self) -> np.ndarray:
        """``direction @ diag(spacing)``: continuous index (x, y, z) -> world offset."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3) @ np.diag(self.spacing)

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        return np.asarray(index, dtype=np.float64) @ self.matrix.T + np.asarray(self.origin)

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous (x, y, z) index of world points; honours oblique direction cosines."""
        inv = np.linalg.inv(self.matrix)
        return (np.asarray(points, dtype=np.float64) - np.asarray(self.origin)) @ inv.T

    @property
    def center(self) -> np.ndarray:
        return self.index_to_world((np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0)


@dataclass(frozen=True)
class Frame:
    """World-space source, detector centre and unit axes of one view."""

    source: np.ndarray
    detector_center: np.ndarray
    normal: np.ndarray  # from the detector towards the source
    u: np.ndarray  # column direction
    v: np.ndarray  # row direction
    isocenter: np.ndarray


def view_frame(view: View, isocenter: np.ndarray) -> Frame:
    """Source, detector and axes of ``view`` around ``isocenter`` (view's own one wins)."""
    iso = np.asarray(view.isocenter_mm if view.isocenter_mm is not None else isocenter, float)
    t = math.radians(view.angle_deg)
    n = np.array([math.sin(t), -math.cos(t), 0.0])
    return Frame(
        source=iso + view.sid_mm * n,
        detector_center=iso - (view.sdd_mm - view.sid_mm) * n,
        normal=n,
        u=np.array([math.cos(t), math.sin(t), 0.0]),
        v=np.array([0.0, 0.0, -1.0]),
        isocenter=iso,
    )


def pixel_centers(view: View, frame: Frame) -> np.ndarray:
    """World coordinates of every detector pixel centre, shape ``(rows, cols, 3)``."""
    cols = (np.arange(view.cols) - (view.cols - 1) / 2.0) * view.spacing_mm[0]
    rows = (np.arange(view.rows) - (view.rows - 1) / 2.0) * view.spacing_mm[1]
    return (
        frame.detector_center[None, None, :]
        + cols[None, :, None] * frame.u[None, None, :]
        + rows[:, None, None] * frame.v[None, None, :]
    )


def project_points(view: View, frame: Frame, points: np.ndarray) -> np.ndarray:
    """Continuous ``(row, col)`` detector coordinates of world points (central projection).

    Useful to place vertebra centroids on a DRR; the tests use it only after checking it
    against an independent trigonometric formula.
    """
    p = np.atleast_2d(np.asarray(points, dtype=np.float64))
    s, d, n = frame.source, frame.detector_center, frame.normal
    lam = ((d - s) @ n) / ((p - s) @ n)
    hit = s + lam[:, None] * (p - s)
    col = (hit - d) @ frame.u / view.spacing_mm[0] + (view.cols - 1) / 2.0
    row = (hit - d) @ frame.v / view.spacing_mm[1] + (view.rows - 1) / 2.0
    return np.stack([row, col], axis=1)
