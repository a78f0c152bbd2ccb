"""Gaussian heatmap targets for vertebra centroids, and their decoding back into points.

Why Gaussians with a sigma in millimetres: the target of level ``k`` is
``exp(-|x - c_k|^2 / (2 sigma^2))`` sampled on the working grid, so the network regresses a
smooth bump whose peak is the centroid (Payer et al.'s spatial configuration network); a sigma
fixed in mm keeps the bump the same anatomical size whatever the working spacing.

Decoding a heatmap into a point: the peak voxel (the global peak of a channel,
:func:`channel_peaks`, or every channel's local maxima when detecting every vertebra,
:func:`detect_points`), then sub-voxel refinement. The logarithm
of a Gaussian is a quadratic, so fitting a parabola per axis to the log of three samples
(:func:`refine_peak`) recovers the centre of a sampled Gaussian *exactly* -- also at the edge
of the field of view, where the three samples are taken one-sided, and even for a centre just
outside the grid. A local weighted mean (``method="mean"``) is offered too; it is biased at the
border (the window is cut) and where the window is not centred on the true centre, which is
why the log-parabola is the default.

Arrays are ``[z, y, x]`` (SimpleITK's numpy order); points in index space are ``(z, y, x)``
continuous indices.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_TINY = 1e-12


def gaussian_heatmaps(
    points_zyx: np.ndarray | list,
    shape_zyx: tuple[int, int, int],
    spacing_zyx: tuple[float, float, float] | list[float],
    sigma_mm: float,
) -> np.ndarray:
    """One Gaussian heatmap per point: float32 ``[n_points, *shape_zyx]``, peak value 1 at the
    (continuous) point. A row of NaN marks a level absent from the case: its map is all 0."""
    pts = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
    if sigma_mm <= 0:
        raise ValueError(f"sigma_mm must be > 0, got {sigma_mm}")
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    out = np.zeros((len(pts), *shape_zyx), dtype=np.float32)
    axes = [np.arange(n, dtype=np.float64) for n in shape_zyx]
    for k, p in enumerate(pts):
        if not np.all(np.isfinite(p)):
            continue
        # separable: a product of three 1D Gaussians
        g = [
            np.exp(-(((a - c) * s) ** 2) / (2.0 * sigma_mm**2))
            for a, c, s in zip(axes, p, sp, strict=True)
        ]
        out[k] = (g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]).astype(
            np.float32
        )
    return out


def _parabola_vertex(vals: np.ndarray, centre: int) -> float | None:
    """Index of the vertex of the parabola through ``log`` of three samples at
    ``centre - 1, centre, centre + 1``; None for a flat or non-concave triple."""
    lm, l0, lp = np.log(np.maximum(vals, _TINY))
    denom = lm - 2.0 * l0 + lp
    if not np.isfinite(denom) or denom >= 0:
        return None
    return float(0.5 * (lm - lp) / denom) + centre


def refine_peak(
    heatmap: np.ndarray, peak_zyx: tuple[int, int, int], method: str = "gaussian", radius: int = 2
) -> np.ndarray:
    """Sub-voxel position (continuous ``z, y, x`` index) of the bump whose peak voxel is
    ``peak_zyx``.

    ``gaussian``: per axis, a parabola through the log of three samples around the peak (taken
    one-sided at the border) -- exact for a sampled Gaussian. ``mean``: the heatmap-weighted
    mean of the ``(2 radius + 1)^3`` window around the peak, clipped at the border.
    """
    peak = np.asarray(peak_zyx, dtype=int)
    shape = np.asarray(heatmap.shape)
    if method == "mean":
        lo = np.maximum(peak - radius, 0)
        hi = np.minimum(peak + radius + 1, shape)
        win = np.clip(heatmap[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], 0, None).astype(float)
        total = win.sum()
        if total <= 0:
            return peak.astype(float)
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        return np.array([(g * win).sum() / total for g in grids])
    if method != "gaussian":
        raise ValueError(f"refine method must be 'gaussian' or 'mean', got {method!r}")
    out = peak.astype(float)
    for ax in range(3):
        n = int(shape[ax])
        if n < 3:
            continue
        mid = int(np.clip(peak[ax], 1, n - 2))  # one-sided triple at the border
        idx = [list(peak) for _ in range(3)]
        for j, d in enumerate((-1, 0, 1)):
            idx[j][ax] = mid + d
        vals = np.array([heatmap[tuple(i)] for i in idx], dtype=float)
        v = _parabola_vertex(vals, mid)
        # a non-concave triple (noise) or a vertex far from the peak: keep the peak voxel
        out[ax] = v if v is not None and abs(v - peak[ax]) <= 1.5 else float(peak[ax])
    return out


def channel_peaks(
    heatmaps: np.ndarray, threshold: float, method: str = "gaussian"
) -> list[tuple[np.ndarray, float] | None]:
    """The global peak of each channel above ``threshold`` as (refined ``z, y, x``, value), or
    None for a channel whose maximum stays below it: at most one point per level."""
    out: list[tuple[np.ndarray, float] | None] = []
    for h in heatmaps:
        flat = int(np.argmax(h))
        val = float(h.flat[flat])
        if not val > threshold:
            out.append(None)
            continue
        peak = np.unravel_index(flat, h.shape)
        out.append((refine_peak(h, peak, method), val))
    return out


def detect_points(
    heatmaps: np.ndarray,
    spacing_zyx: tuple[float, float, float] | list[float],
    threshold: float,
    min_distance_mm: float,
    method: str = "gaussian",
) -> list[dict]:
    """Every vertebra the heatmaps show, whatever channel shows it.

    Candidates are the local maxima (3x3x3) of every channel above ``threshold``; greedy
    non-maximum suppression, strongest first, keeps those at least ``min_distance_mm`` apart;
    each is refined on its own channel. Returns ``{"zyx", "value", "channel"}`` sorted by
    decreasing value. Per-channel maxima rather than maxima of the channel-wise maximum: a
    weak vertebra next to a strong one is often not a local maximum of the maximum map (the
    neighbour's bump covers its flank) but is one in its own channel. This is the detection
    half of decoding: which level each point is comes from
    :func:`ctseg.localisation.decode.assign_levels`, so one channel firing on the wrong
    vertebra cannot hide that vertebra.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be [C, z, y, x], got shape {heatmaps.shape}")
    sp = np.asarray(spacing_zyx, dtype=float)
    size = (1, 3, 3, 3)
    is_max = (heatmaps == ndimage.maximum_filter(heatmaps, size=size, mode="nearest")) & (
        heatmaps > threshold
    )
    cand = np.argwhere(is_max)  # rows: channel, z, y, x
    values = heatmaps[tuple(cand.T)]
    order = np.argsort(-values, kind="stable")
    kept: list[dict] = []
    for i in order:
        ch, zyx_vox = int(cand[i, 0]), tuple(cand[i, 1:])
        zyx = refine_peak(heatmaps[ch], zyx_vox, method)
        if any(np.linalg.norm((zyx - k["zyx"]) * sp) < min_distance_mm for k in kept):
            continue
        kept.append({"zyx": zyx, "value": float(values[i]), "channel": ch})
    return kept


def _window(maps: np.ndarray, zyx: np.ndarray, radius: int) -> np.ndarray:
    """``[C, n]``: every channel's values within ``radius`` voxels of the point (clipped to
    the grid)."""
    c = np.rint(np.asarray(zyx)).astype(int)
    c = np.clip(c, 0, np.asarray(maps.shape[1:]) - 1)
    lo = np.maximum(c - radius, 0)
    hi = np.minimum(c + radius + 1, maps.shape[1:])
    win = maps[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    return win.reshape(len(maps), -1)


def sample_max(heatmaps: np.ndarray, zyx: np.ndarray, radius: int = 1) -> np.ndarray:
    """Per channel, the maximum of the heatmap within ``radius`` voxels of the point: the
    evidence that the point is each level (tolerates a one-voxel offset between channels)."""
    return _window(heatmaps, zyx, radius).max(axis=1)


def sample_mean(maps: np.ndarray, zyx: np.ndarray, radius: int = 1) -> np.ndarray:
    """Per channel, the mean of ``maps`` within ``radius`` voxels of the point: a point's
    identification evidence, averaged over its neighbourhood so that one noisy voxel does
    not decide its level."""
    return _window(maps, zyx, radius).mean(axis=1)
