"""Resampling between grids: to a working spacing, and back onto a source grid.

One module, so that cubes, validation and inference resample identically (same interpolator,
same extent rule, same padding value); only the physical extent and geometry are kept, never
the voxel count.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def resample_to_spacing(
    image: sitk.Image,
    spacing_xyz: list[float] | tuple[float, ...],
    *,
    is_label: bool,
    default: float = 0.0,
) -> sitk.Image:
    """Resample to ``spacing_xyz`` (mm) keeping origin and direction and the physical extent.

    Labels use nearest neighbour (ids must not blend), images linear interpolation.
    """
    old_sp = np.array(image.GetSpacing(), dtype=float)
    new_sp = np.array([float(s) for s in spacing_xyz], dtype=float)
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old_sp / new_sp)).astype(int)
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    return sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        interp,
        image.GetOrigin(),
        [float(s) for s in new_sp],
        image.GetDirection(),
        float(default),
        image.GetPixelID(),
    )


def resample_onto(
    image: sitk.Image,
    reference: sitk.Image,
    *,
    interpolator: int = sitk.sitkLinear,
    default: float = 0.0,
    pixel_type: int | None = None,
) -> sitk.Image:
    """``image`` resampled onto exactly ``reference``'s grid (size, spacing, origin, direction)."""
    return sitk.Resample(
        image,
        reference,
        sitk.Transform(),
        interpolator,
        float(default),
        image.GetPixelID() if pixel_type is None else pixel_type,
    )
