"""One canonical orientation for training and inference, and the exact way back.

Scanners store the same anatomy in any of the 48 axis-aligned orientations (VerSe keeps the
acquisition orientation, e.g. PIR; NIfTI tools write RAS; DICOM is mostly LPS). A network that
sees arrays only ever in one orientation must be given that orientation: every volume is
permuted and flipped to :data:`CANONICAL` (``sitk.DICOMOrient``, lossless: no interpolation) before
cubes and before prediction, and predictions are permuted back and given the source image's
exact geometry. In the canonical orientation array axes [z, y, x] run inferior->superior,
anterior->posterior and right->left.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ctseg.core.errors import InputError

#: DICOM/ITK code of the identity direction: x to the patient's left, y posterior, z superior.
CANONICAL = "LPS"


def orientation_code(image: sitk.Image) -> str:
    """The three-letter code of the axis-aligned orientation closest to ``image``'s direction."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_canonical(image: sitk.Image) -> sitk.Image:
    """``image`` permuted/flipped to :data:`CANONICAL` (same voxels, same world positions)."""
    if image.GetDimension() != 3:
        raise InputError(f"expected a 3D image, got {image.GetDimension()}D")
    if orientation_code(image) == CANONICAL:
        return image
    return sitk.DICOMOrient(image, CANONICAL)


def from_canonical(canonical: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A canonical-orientation image mapped back onto ``reference``'s grid, voxel for voxel.

    The permutation is undone by ``DICOMOrient`` to the reference's code, and the reference's
    geometry is then copied exactly (it differs from the permuted one only by rounding), so the
    result lies on the source grid bit for bit.
    """
    code = orientation_code(reference)
    back = canonical if orientation_code(canonical) == code else sitk.DICOMOrient(canonical, code)
    if back.GetSize() != reference.GetSize():
        raise InputError(
            f"orientation round trip changed the grid: {back.GetSize()} vs {reference.GetSize()}"
        )
    if not np.allclose(
        back.GetOrigin(), reference.GetOrigin(), atol=1e-3 * max(reference.GetSpacing())
    ):
        raise InputError("orientation round trip moved the origin")
    back.CopyInformation(reference)
    return back
