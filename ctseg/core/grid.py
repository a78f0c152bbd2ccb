"""The one "same grid" test: whether two images share size, spacing, origin and direction.

Label maps, metal masks and predictions must lie on exactly their CT's voxel grid; nothing is
resampled silently. One tolerance covers the float round-off of files written by other tools
(e.g. spacing stored as float32 by one writer and float64 by another):

- spacing: ``|a - b| <= SPACING_ATOL_MM + SPACING_RTOL * |b|`` (1e-3 mm + 1e-4 relative);
- origin: ``|a - b| <= max(ORIGIN_ATOL_MM, 1e-5 * max|origin of a|)`` (1e-3 mm, or 10 ppm of
  the largest origin coordinate);
- direction cosines: ``|a - b| <= DIRECTION_ATOL + 1e-5 * |b|`` (1e-4).

Size must match exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.errors import InputError

SPACING_ATOL_MM = 1e-3
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


def grid_differences(a: sitk.Image, b: sitk.Image) -> list[str]:
    """What differs between the grids of ``a`` (the reference) and ``b``; empty when the same."""
    if a.GetSize() != b.GetSize():
        problems = [f"size {b.GetSize()} != {a.GetSize()}"]
        if a.GetDimension() != b.GetDimension():
            return problems
    else:
        problems = []
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=SPACING_RTOL, atol=SPACING_ATOL_MM):
        problems.append(f"spacing {b.GetSpacing()} != {a.GetSpacing()}")
    origin_atol = max(ORIGIN_ATOL_MM, 1e-6 * np.abs(a.GetOrigin()).max() * 10)
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=origin_atol):
        problems.append(f"origin {b.GetOrigin()} != {a.GetOrigin()}")
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=DIRECTION_ATOL):
        problems.append(f"direction {b.GetDirection()} != {a.GetDirection()}")
    return problems


def same_grid(a: sitk.Image, b: sitk.Image) -> tuple[bool, str]:
    """Whether ``b`` lies on ``a``'s grid, and if not what differs (see :func:`grid_differences`)."""
    problems = grid_differences(a, b)
    return not problems, "; ".join(problems)


def check_same_grid(
    a: sitk.Image,
    b: sitk.Image,
    path_a: str | Path,
    path_b: str | Path,
    *,
    case: str | None = None,
) -> None:
    """Raise :class:`InputError` (naming both files) unless ``b`` lies on ``a``'s grid."""
    problems = grid_differences(a, b)
    if problems:
        raise InputError(
            f"images are not on the same grid ({'; '.join(problems)}); other file: {path_b}",
            path=path_a,
            case=case,
        )
