"""The QC picture: sagittal and coronal slices through the spine, levels coloured and named.

A reader checks a labelling at a glance on a mid-sagittal view (level order, gaps, a level
drawn twice) and a coronal one (lateral drift, scoliosis). Both images are put on an LPS
grid first (``DICOMOrient``), so that superior is up and the patient's right is on the
viewer's left (radiological convention) whatever the scan's storage order. The slices go
through the median centroid of the labelled voxels; each level's name is written at its
centroid in its colour, and the QC verdict (and flag names) is the title.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.atomic import atomic_path
from ctseg.core.labels import VERSE_NAMES
from ctseg.formats.colors import color_of

#: Display window in HU (bone).
WINDOW = (-250.0, 1250.0)


def write_qc_png(
    labels: sitk.Image, ct: sitk.Image, path: str | Path, *, qc: dict | None = None, title: str = ""
) -> Path:
    """Write the sagittal + coronal QC PNG to ``path`` (atomically); returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lab = sitk.GetArrayFromImage(sitk.DICOMOrient(labels, "LPS"))  # [z (S), y (P), x (L)]
    hu = sitk.GetArrayFromImage(sitk.DICOMOrient(ct, "LPS")).astype(np.float32)
    if lab.shape != hu.shape:
        raise ValueError(f"labels {lab.shape} and CT {hu.shape} are not on the same grid")
    sx, sy, sz = sitk.DICOMOrient(ct, "LPS").GetSpacing()
    fg = np.nonzero(lab)
    if fg[0].size:
        kz, jy, ix = (int(np.median(a)) for a in fg)
    else:
        kz, jy, ix = (n // 2 for n in lab.shape)
    lo, hi = WINDOW
    gray = np.clip((hu - lo) / (hi - lo), 0, 1)
    present = [int(v) for v in np.unique(lab) if v]
    lut = np.zeros((int(lab.max(initial=0)) + 1, 4), np.float32)
    for v in present:
        lut[v] = (*color_of(v), 0.55)

    # sagittal: rows z (superior up), columns y (anterior left); coronal: columns x (right left)
    panels = [
        ("sagittal", gray[:, :, ix], lab[:, :, ix], sz / sy),
        ("coronal", gray[:, jy, :], lab[:, jy, :], sz / sx),
    ]
    verdict = ""
    if qc is not None:
        verdict = (
            "trusted"
            if qc.get("trusted")
            else ("FLAGGED: " + ", ".join(sorted({f["name"] for f in qc.get("flags", [])})))
        )
    fig = Figure(figsize=(9, 7), dpi=100)
    FigureCanvasAgg(fig)
    for n, (name, img, ov, aspect) in enumerate(panels):
        ax = fig.add_subplot(1, 2, n + 1)
        ax.imshow(
            img, cmap="gray", vmin=0, vmax=1, aspect=aspect, origin="lower", interpolation="nearest"
        )
        ax.imshow(lut[ov], aspect=aspect, origin="lower", interpolation="nearest")
        for v in present:
            rows, cols = np.nonzero(ov == v)
            if rows.size:
                ax.text(cols.mean(), rows.mean(), VERSE_NAMES.get(v, str(v)), color=color_of(v),
                        fontsize=7, ha="center", va="center", fontweight="bold")  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(" - ".join(t for t in (title, verdict) if t), fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png")
    return Path(path)
