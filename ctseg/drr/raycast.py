"""Torch ray caster: line integrals and per-label path lengths along cone-beam rays.

Why this design:

* Rays are clipped to the volume box with the slab method in continuous index space (so
  oblique direction cosines are honoured exactly), and only the inside is sampled.
* Each ray gets its own sample count ``ceil(length / step)`` and its own step
  ``length / count <= step_mm`` (midpoint rule), so a ray's value does not depend on which
  chunk it is rendered in, and no sample is wasted outside the box.
* Trilinear samples come from ``torch.nn.functional.grid_sample`` on the ``(1, C, Z, Y, X)``
  volume (``align_corners=True``, zero padding). With zero padding the interpolated field
  ramps to 0 one voxel outside the outermost voxel centres, so the box is
  ``[-1, size]`` in index units; its integral equals the voxel-box integral of a constant
  volume.
* Label paths use nearest-neighbour labels at the same sample points and accumulate the step
  length per label with one ``scatter_add`` over compact label ids.
* Rays are processed in chunks bounded by a sample budget so memory stays bounded for 512^3
  volumes and 1024^2 detectors; CUDA is used when present.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ctseg.core.device import resolve_device
from ctseg.core.errors import InputError
from ctseg.drr.geometry import View, VolumeGeometry, pixel_centers, view_frame


@dataclass
class RayResult:
    """Line integrals ``(C, rows, cols)`` and, with labels, path lengths ``(L, rows, cols)`` in mm."""

    line_integrals: np.ndarray
    label_values: np.ndarray  # the label value of each path-length channel
    label_paths: np.ndarray | None


def _ray_setup(
    geom: VolumeGeometry, view: View, isocenter: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source (index space), ray vectors, t_near, t_far, world length per ray (float64), and
    whether each ray leaves the box before reaching the detector."""
    frame = view_frame(view, geom.center if isocenter is None else isocenter)
    pix = pixel_centers(view, frame).reshape(-1, 3)
    a = geom.world_to_index(frame.source[None, :])[0]
    b = geom.world_to_index(pix) - a
    length = np.linalg.norm(pix - frame.source, axis=1)
    lo = -1.0
    hi = np.asarray(geom.size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - a) / b
        t2 = (hi - a) / b
    # Axis-parallel rays: inside the slab -> unbounded, outside -> empty.
    par = b == 0
    inside = (a > lo) & (a < hi)
    t1 = np.where(par, np.where(inside, -np.inf, np.inf), t1)
    t2 = np.where(par, np.where(inside, np.inf, -np.inf), t2)
    t_near = np.maximum(np.max(np.minimum(t1, t2), axis=1), 0.0)
    t_exit = np.min(np.maximum(t1, t2), axis=1)
    t_far = np.minimum(t_exit, 1.0)
    t_far = np.maximum(t_far, t_near)
    return a, b, t_near, t_far, length, t_exit <= 1.0


def _compact_labels(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct label values and the volume of their ranks (float32, exact below 2^24).

    A bincount lookup table is O(N) for the usual small ids (VerSe, the metal flag); np.unique
    (a sort) is the fallback for huge ids.
    """
    top = int(lab.max()) if lab.size else 0
    if top < 2**20:
        flat = lab.reshape(-1).astype(np.int64, copy=False)
        values = np.flatnonzero(np.bincount(flat, minlength=top + 1))
        lut = np.zeros(top + 1, np.float32)
        lut[values] = np.arange(values.size, dtype=np.float32)
        return values.astype(np.int64), lut[lab]
    values, inverse = np.unique(lab, return_inverse=True)
    return values.astype(np.int64), inverse.reshape(lab.shape).astype(np.float32)


def raycast(
    volume: np.ndarray | torch.Tensor | None,
    geom: VolumeGeometry,
    view: View,
    *,
    labels: np.ndarray | torch.Tensor | None = None,
    isocenter: np.ndarray | None = None,
    step_mm: float | None = None,
    max_samples: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> RayResult:
    """Integrate ``volume`` (``(Z, Y, X)`` or ``(C, Z, Y, X)``, 1/mm) along every detector ray.

    ``step_mm`` defaults to half the smallest voxel spacing (the Nyquist step for trilinear
    interpolation); ``max_samples`` bounds the samples per chunk (default 2^20 on CPU, 2^24
    on CUDA). ``labels`` (``(Z, Y, X)`` non-negative ints on the same grid) adds per-label
    path lengths; ``volume`` may be None when only labels are wanted.
    """
    dev = resolve_device(device)
    zyx = tuple(reversed(geom.size))
    if min(geom.size) < 2:
        raise InputError(f"volume needs at least 2 voxels along each axis, got size {geom.size}")
    vol = None
    nc = 0
    if volume is not None:
        vol = torch.as_tensor(volume)
        if vol.ndim == 3:
            vol = vol[None]
        if vol.ndim != 4 or tuple(vol.shape[1:]) != zyx:
            raise InputError(
                f"volume shape {tuple(vol.shape)} does not match the geometry (z, y, x) {zyx}"
            )
        nc = vol.shape[0]
        vol = vol.to(device=dev, dtype=torch.float32)[None].contiguous()  # (1, C, Z, Y, X)

    step = float(step_mm) if step_mm else 0.5 * min(geom.spacing)
    a, b, t_near, t_far, length, exits = _ray_setup(geom, view, isocenter)
    seg_mm = (t_far - t_near) * length
    counts = np.ceil(seg_mm / step - 1e-9).astype(np.int64)
    counts[seg_mm <= 0] = 0
    dt = np.where(counts > 0, (t_far - t_near) / np.maximum(counts, 1), 0.0)
    dt_mm = dt * length
    n_rays = counts.size

    lab_vol = None
    label_values = np.zeros(0, dtype=np.int64)
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != zyx:
            raise InputError(f"labels shape {lab.shape} does not match the volume grid {zyx}")
        if lab.size and lab.min() < 0:
            raise InputError("label values must be non-negative")
        label_values, compact = _compact_labels(lab)
        if label_values.size and label_values[0] == 0:
            label_values = label_values[1:]
        else:
            compact += 1.0  # no background in the volume: id 0 stays "outside"
        lab_vol = torch.as_tensor(compact, device=dev)[None, None]

    budget = max_samples or (2**24 if dev.type == "cuda" else 2**20)
    # Rays sorted by sample count (longest first) and cut into chunks of about ``budget``
    # samples: little padding, and rays that miss the volume are never sampled.
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    bounds = []
    s = 0
    while s < order.size:
        e = min(order.size, s + max(1, budget // int(counts[order[s]])))
        bounds.append((s, e))
        s = e
    size_xyz = torch.tensor(geom.size, dtype=torch.float64)
    scale = 2.0 / (size_xyz - 1.0)
    # normalised grid coordinates: g = a_n + t * b_n
    a_n = (torch.as_tensor(a) * scale - 1.0).to(device=dev, dtype=torch.float32)
    b_all = torch.as_tensor(b) * scale

    out = torch.zeros(nc, n_rays, dtype=torch.float32, device=dev)
    n_lab = label_values.size + 1
    paths = (
        torch.zeros(n_lab, n_rays, dtype=torch.float32, device=dev) if lab_vol is not None else None
    )
    bar = tqdm(
        bounds, desc=f"drr {view.name}", leave=False, disable=not progress or len(bounds) < 4
    )
    for s, e in bar:
        rays = order[s:e]
        kc = int(counts[rays[0]])
        idx = torch.as_tensor(rays, device=dev)
        cnt = torch.as_tensor(counts[rays], device=dev)
        k = torch.arange(kc, device=dev, dtype=torch.float32)
        dt_c = torch.as_tensor(dt[rays], dtype=torch.float32, device=dev)
        t = (
            torch.as_tensor(t_near[rays], dtype=torch.float32, device=dev)[:, None]
            + (k[None, :] + 0.5) * dt_c[:, None]
        )
        # Samples past a ray's own count lie beyond its exit from the [-1, size] box, where
        # zero padding gives exactly 0; only rays that end inside the box (a detector inside
        # the volume) need them moved far behind the source.
        if not exits[rays].all():
            t = torch.where(k[None, :] < cnt[:, None], t, torch.full_like(t, -1e3))
        b_c = b_all[rays].to(device=dev, dtype=torch.float32)
        # (1, 1, R, K, 3) grid as (x, y, z); one fused multiply-add
        grid = torch.addcmul(a_n, t[..., None], b_c[:, None, :])[None, None]
        dtm = torch.as_tensor(dt_mm[rays], dtype=torch.float32, device=dev)
        if vol is not None:
            samp = F.grid_sample(
                vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True
            )  # (1, C, 1, R, K)
            out[:, idx] = samp[0, :, 0].sum(dim=-1) * dtm[None, :]
        if paths is not None and lab_vol is not None:
            ids = F.grid_sample(
                lab_vol, grid, mode="nearest", padding_mode="zeros", align_corners=True
            )[0, 0, 0].to(torch.int64)  # (R, K)
            acc = torch.zeros(e - s, n_lab, dtype=torch.float32, device=dev)
            acc.scatter_add_(1, ids, dtm[:, None].expand(-1, kc))
            paths[:, idx] = acc.T
    shape = (view.rows, view.cols)
    li = out.reshape(nc, *shape).cpu().numpy()
    lp = None if paths is None else paths[1:].reshape(-1, *shape).cpu().numpy()
    return RayResult(line_integrals=li, label_values=label_values, label_paths=lp)
