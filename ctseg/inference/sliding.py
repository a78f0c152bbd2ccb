"""Gaussian-weighted sliding-window inference, one implementation for validation and prediction.

Windows of the training patch size overlap by half; their logits are blended with a Gaussian
importance map (nnU-Net: centre voxels of a window see the most context and are the most
reliable). 2D models run slice by slice over a volume through :func:`slicewise_logits`, the
loop both training's validation and prediction use.
"""

from __future__ import annotations

import numpy as np
import torch

from ctseg.training.precision import mixed_precision


def gaussian_importance(patch: tuple[int, ...], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Gaussian weight map of ``patch`` shape (sigma = patch / 8), normalised to max 1, no zeros."""
    grids = np.meshgrid(*[np.arange(p) - (p - 1) / 2.0 for p in patch], indexing="ij")
    w = np.ones(patch, dtype=np.float64)
    for g, p in zip(grids, patch, strict=True):
        w *= np.exp(-0.5 * (g / max(p * sigma_scale, 1e-6)) ** 2)
    w /= w.max()
    w[w < 1e-4] = 1e-4
    return w.astype(np.float32)


def default_batch(patch: tuple[int, ...]) -> int:
    """Windows per network call: 4 for patches up to 2^16 voxels (the default 3D 32 x 32 x 64
    patch: 1.0 s against 4.1 s at one window per call for a 102 x 102 x 60 volume on 2 CPU
    cores), fewer for larger patches to bound the activations, at least 2."""
    return int(max(2, min(4, 2**18 // max(int(np.prod(patch)), 1))))


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Window start positions covering ``size`` with ``patch``-long windows at ``overlap``."""
    if size <= patch:
        return [0]
    step = max(1, int(round(patch * (1.0 - overlap))))
    n = int(np.ceil((size - patch) / step)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, size - patch, n)})


def _pad_to(image: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    pads = [(0, max(0, s - n)) for n, s in zip(image.shape, shape, strict=True)]
    crop = tuple(slice(0, n) for n in image.shape)
    return np.pad(image, pads, mode="constant", constant_values=0.0), crop


@torch.no_grad()
def sliding_window_logits(
    model: torch.nn.Module,
    image: np.ndarray,
    patch: tuple[int, ...],
    n_classes: int,
    *,
    overlap: float = 0.5,
    device: torch.device | str = "cpu",
    tta_flip: bool = False,
    batch_size: int | None = None,
    cpu_bf16: bool = False,
) -> np.ndarray:
    """Gaussian-weighted sliding-window logits [C, *image.shape] for a 2D or 3D ``image``.

    Images smaller than ``patch`` are zero-padded (0 = air after normalisation) and cropped
    back. ``tta_flip`` averages with the prediction of the image flipped along its last (x)
    axis, the flip used in training.

    Windows go through the network ``batch_size`` at a time (default :func:`default_batch`).
    On the CPU a 3D batch of one is never run: PyTorch sends a single-sample ``conv3d`` to its
    im2col fallback (``slow_conv3d``) instead of oneDNN, measured 3-4x slower per window than
    a batch of two, so a lone window is run beside a copy of itself (each window's logits do
    not depend on what else is in the batch: instance norm and convolutions are per sample).

    The forward pass runs in bf16 on CUDA, and on a CPU with native bf16 when ``cpu_bf16``
    (the precision the model trained in, :func:`ctseg.training.precision.mixed_precision`);
    logits are blended in float32. Why: on this project's CPU a vert3d window costs about a
    third in bf16, and the labels agree with float32's on 99.999 % of voxels (README).
    """
    device = torch.device(device)
    model.eval()
    patch = tuple(int(p) for p in patch)
    batch_size = default_batch(patch) if batch_size is None else max(1, int(batch_size))
    pair_singles = device.type == "cpu" and len(patch) == 3
    padded, crop = _pad_to(
        image.astype(np.float32), tuple(max(n, p) for n, p in zip(image.shape, patch, strict=True))
    )
    weight = torch.from_numpy(gaussian_importance(patch)).to(device)
    acc = torch.zeros((n_classes, *padded.shape), dtype=torch.float32, device=device)
    norm = torch.zeros(padded.shape, dtype=torch.float32, device=device)
    vol = torch.from_numpy(padded).to(device)
    starts = [window_starts(n, p, overlap) for n, p in zip(padded.shape, patch, strict=True)]
    corners = [
        tuple(c) for c in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(patch))
    ]
    autocast = mixed_precision(device, cpu_bf16)
    for i in range(0, len(corners), batch_size):
        group = corners[i : i + batch_size]
        sl = [
            tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True)) for corner in group
        ]
        x = torch.stack([vol[s] for s in sl])[:, None]
        if pair_singles and len(sl) == 1:
            x = x.repeat(2, *([1] * (x.dim() - 1)))
        with autocast():
            out = model(x).float()
            if tta_flip:
                out = 0.5 * (out + torch.flip(model(torch.flip(x, dims=[-1])).float(), dims=[-1]))
        for s, o in zip(sl, out[: len(sl)], strict=True):
            acc[(slice(None), *s)] += o * weight
            norm[s] += weight
    acc /= norm
    return acc[(slice(None), *crop)].cpu().numpy()


def slice_patch(patch_zyx: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """The 2D patch of a 3D patch seen along ``axis``."""
    return tuple(p for k, p in enumerate(patch_zyx) if k != axis)


def slicewise_logits(
    model: torch.nn.Module,
    volume: np.ndarray,
    patch_zyx: tuple[int, ...],
    axis: int,
    n_classes: int,
    **kw,
) -> np.ndarray:
    """Logits [C, *volume.shape] of a 2D model applied to every slice of ``volume`` along
    ``axis`` ([z, y, x] index), each slice with the 2D sliding window of the training patch."""
    patch2d = slice_patch(tuple(patch_zyx), axis)
    return np.stack(
        [
            sliding_window_logits(model, np.take(volume, k, axis=axis), patch2d, n_classes, **kw)
            for k in range(volume.shape[axis])
        ],
        axis=1 + axis,
    )
