"""The working-grid image of a CT, computed only where the working grid samples it.

:func:`ctseg.core.resample.resample_to_spacing` smooths the whole CT with ITK's discrete
Gaussian (:func:`~ctseg.core.resample.antialias`) and then interpolates it linearly at the
working grid's points. From 0.8 mm to 4 mm that filters 78 M voxels three times to read one
voxel in 125 (4.5 s of the 512 x 512 x 300 benchmark on 2 cores). Both steps are separable
along the image's own index axes (the working grid keeps the origin and direction, so each
working index maps to one continuous source index per axis), so the same numbers come from
one small matrix per axis: the linear-interpolation weights of each working sample times the
Gaussian kernel around its two source neighbours, applied axis by axis (z first: it shrinks
the volume most). The kernel is ITK's own (its impulse response: same variance, maximum
error, maximum width and image spacing), edges replicate as ITK's zero-flux Neumann
boundary does, interpolation clamps at the last voxel as ITK's linear interpolator does, and
samples outside the source's voxel extent get the default value as in ``sitk.Resample``.
Results agree with :func:`resample_to_spacing` to float32 rounding (tested).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
import torch

#: ITK discrete Gaussian settings used by :func:`ctseg.core.resample.antialias`.
MAX_KERNEL_WIDTH = 64
MAX_ERROR = 0.01


@lru_cache(maxsize=32)
def itk_gaussian_kernel(variance_mm2: float, spacing_mm: float) -> np.ndarray:
    """ITK's ``DiscreteGaussian`` kernel along one axis (odd length, float64): the filter's
    response to a unit impulse with the same variance, spacing and limits."""
    if variance_mm2 <= 0.0:
        return np.ones(1)
    n = 2 * MAX_KERNEL_WIDTH + 3
    arr = np.zeros((3, 3, n), np.float32)
    arr[1, 1, n // 2] = 1.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(spacing_mm), 1.0, 1.0])
    out = sitk.GetArrayFromImage(
        sitk.DiscreteGaussian(
            img, [float(variance_mm2), 0.0, 0.0], MAX_KERNEL_WIDTH, MAX_ERROR, True
        )
    )[1, 1].astype(np.float64)
    nz = np.flatnonzero(out)
    r = int(np.abs(nz - n // 2).max()) if len(nz) else 0
    return out[n // 2 - r : n // 2 + r + 1]


def axis_matrix(positions: np.ndarray, n: int, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(W [m, n], outside [m])``: row i holds the weights of source voxels 0..n-1 that give
    the linearly interpolated (ITK's clamping), ``kernel``-smoothed (edges replicated) value at
    continuous index ``positions[i]``; ``outside`` marks positions beyond the voxel extent."""
    positions = np.asarray(positions, dtype=np.float64)
    r = len(kernel) // 2
    m = len(positions)
    w = np.zeros((m, n), np.float64)
    base = np.maximum(np.floor(positions).astype(np.int64), 0)
    d = positions - base
    two = (d > 0) & (base + 1 <= n - 1)
    taps = np.arange(-r, r + 1)
    rows = np.arange(m)
    for b_off, lw in ((0, np.where(two, 1.0 - d, 1.0)), (1, np.where(two, d, 0.0))):
        centre = np.minimum(base + b_off, n - 1)
        for t, k in zip(taps, kernel, strict=True):
            np.add.at(w, (rows, np.clip(centre + t, 0, n - 1)), lw * k)
    outside = (positions < -0.5) | (positions >= n - 0.5)
    return w, outside


def working_image(image: sitk.Image, spacing_xyz, *, default: float = 0.0) -> sitk.Image:
    """:func:`ctseg.core.resample.resample_to_spacing` (``is_label=False``) of a 3D image:
    same grid, same values to float32 rounding, computed only at the working grid's samples."""
    if image.GetDimension() != 3:
        raise ValueError(f"working_image needs a 3D image, got {image.GetDimension()}D")
    old = np.array(image.GetSpacing(), dtype=float)
    new = np.array([float(s) for s in spacing_xyz], dtype=float)
    sigma = np.maximum(new - old, 0.0) / 2.0
    smooth = bool((sigma > 1e-3 * old).any())
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old / new)).astype(int)
    with warnings.catch_warnings():  # a read-only view: only read here, never written
        warnings.simplefilter("ignore", UserWarning)
        arr = torch.from_numpy(np.ascontiguousarray(sitk.GetArrayViewFromImage(image), np.float32))
    outside_any = None
    # array axes z, y, x = image axes 2, 1, 0; z first (the largest reduction)
    for arr_axis, ax in ((0, 2), (1, 1), (2, 0)):
        kernel = (
            itk_gaussian_kernel(float(sigma[ax] ** 2), float(old[ax])) if smooth else np.ones(1)
        )
        pos = np.arange(size[ax]) * (new[ax] / old[ax])
        w, outside = axis_matrix(pos, image.GetSize()[ax], kernel)
        arr = torch.tensordot(torch.from_numpy(w.astype(np.float32)), arr, dims=([1], [arr_axis]))
        arr = arr.movedim(0, arr_axis)
        shape = [1, 1, 1]
        shape[arr_axis] = -1
        o = torch.from_numpy(outside).reshape(shape)
        outside_any = o if outside_any is None else outside_any | o
    out_arr = arr.contiguous()
    if bool(outside_any.any()):
        out_arr = torch.where(outside_any.expand_as(out_arr), torch.tensor(float(default)), out_arr)
    out = sitk.GetImageFromArray(out_arr.numpy().astype(np.float32, copy=False))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing([float(s) for s in new])
    out.SetDirection(image.GetDirection())
    return sitk.Cast(out, image.GetPixelID()) if image.GetPixelID() != sitk.sitkFloat32 else out
