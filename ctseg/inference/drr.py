"""bone_drr inference: each view's line-integral image is pre-processed as in training,
segmented whole (padded to a multiple of the network divisor), and the views stacked along z."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ctseg.core.errors import InputError
from ctseg.core.imageio import read_image_file
from ctseg.inference.sliding import sliding_window_logits


def read_drr(path: str | Path, case: str | None = None) -> tuple[np.ndarray, sitk.Image]:
    """A DRR NIfTI as a float32 2D array [rows, cols] plus its image (2D or 3D with one slice)."""
    img = read_image_file(path, case)
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise InputError(f"DRR must be 2D, got shape {arr.shape}", path=path, case=case)
        arr = arr[0]
    return arr, img


def preprocess_drr(arr: np.ndarray, variant: str) -> np.ndarray:
    """Apply the experiment's DRR pre-processing (``ctseg.drr.preprocess.apply``; imported lazily
    because another module owns it) and return float32."""
    from ctseg.drr import preprocess

    return np.asarray(preprocess.apply(arr, variant), dtype=np.float32)


def pad_to_multiple(arr: np.ndarray, k: int) -> np.ndarray:
    """Zero-pad at the far end of each axis to a multiple of ``k`` (network divisor)."""
    return np.pad(arr, [(0, (-n) % k) for n in arr.shape])


def predict_drr_views(
    model: torch.nn.Module,
    meta: dict,
    drr_paths: list[str | Path],
    *,
    device: torch.device,
    case: str | None = None,
) -> sitk.Image:
    """Segment each DRR view; stack the 0/1 masks along z (z = view order).

    The geometry matches ``ctseg.drr.stack_views`` (the truth stack): spacing
    ``[col, row, 1]`` of the first view, default origin and direction, so that prediction and
    truth lie on the same grid.
    """
    variant = meta["experiment"].get("preprocess", "none")
    masks, spacing = [], None
    for p in drr_paths:
        arr, img = read_drr(p, case)
        if spacing is None:
            spacing = img.GetSpacing()[:2]
        x = pad_to_multiple(preprocess_drr(arr, variant), model.divisor)
        logits = sliding_window_logits(model, x, x.shape, meta["n_classes"], device=device)
        masks.append(logits.argmax(0)[: arr.shape[0], : arr.shape[1]].astype(np.uint8))
    if len({m.shape for m in masks}) != 1:
        raise InputError("DRR views of one case differ in size", case=case, path=drr_paths[0])
    out = sitk.GetImageFromArray(np.stack(masks))
    out.SetSpacing((float(spacing[0]), float(spacing[1]), 1.0))
    return out
