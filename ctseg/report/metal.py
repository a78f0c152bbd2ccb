"""Metal labelling's QC picture (``metal/{case}_qc.png``): where the mask lies in the CT.

matplotlib is imported when the picture is drawn, and without pyplot (a bare ``Figure`` on the
Agg canvas). :func:`ctseg.metal.run_metal` calls it, under the temporary name that is renamed
into place with the mask and JSON.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.atomic import atomic_path


def _window(arr: np.ndarray) -> np.ndarray:
    return np.clip((arr + 1000.0) / 4000.0, 0, 1)


def write_qc_png(ct: sitk.Image, mask: sitk.Image, out_png: Path, *, title: str = "") -> None:
    """Coronal and sagittal maximum-intensity projections plus the axial slice with most metal,
    each with the mask overlaid in red; pixel aspect follows the voxel spacing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hu = sitk.GetArrayViewFromImage(ct)  # stored values; only 2D panels become float
    m = sitk.GetArrayViewFromImage(mask) > 0
    sx, sy, sz = ct.GetSpacing()
    per_slice = m.sum(axis=(1, 2))
    z_best = int(np.argmax(per_slice)) if per_slice.any() else hu.shape[0] // 2
    panels = [
        ("coronal MIP", hu.max(axis=1).astype(np.float32), m.any(axis=1), sz / sx, "lower"),
        ("sagittal MIP", hu.max(axis=2).astype(np.float32), m.any(axis=2), sz / sy, "lower"),
        (
            f"axial z={z_best} ({int(per_slice[z_best])} vox)",
            hu[z_best].astype(np.float32),
            m[z_best],
            sy / sx,
            "upper",
        ),
    ]
    fig = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, img, ov, aspect, origin) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(
            _window(img),
            cmap="gray",
            vmin=0,
            vmax=1,
            aspect=aspect,
            origin=origin,
            interpolation="nearest",
        )
        rgba = np.zeros((*ov.shape, 4), np.float32)
        rgba[ov] = (1.0, 0.0, 0.0, 0.6)
        ax.imshow(rgba, aspect=aspect, origin=origin, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
