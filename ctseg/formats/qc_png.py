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
    labels: sitk.Image,
    ct: sitk.Image,
    path: str | Path,
    *,
    qc: dict | None = None,
    title: str = "",
    stats: dict | None = None,
) -> Path:
    """Write the sagittal + coronal QC PNG to ``path`` (atomically); returns ``path``.

    ``stats`` (:func:`~ctseg.formats.vertebra_stats.vertebra_statistics` of ``labels``) saves
    finding the spine again: the slices go through the median of its level centroids.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lab_img = sitk.DICOMOrient(labels, "LPS")
    ct_img = sitk.DICOMOrient(ct, "LPS")
    lab = sitk.GetArrayViewFromImage(lab_img)  # [z (S), y (P), x (L)]
    hu = sitk.GetArrayViewFromImage(ct_img)
    if lab.shape != hu.shape:
        raise ValueError(f"labels {lab.shape} and CT {hu.shape} are not on the same grid")
    sx, sy, sz = ct_img.GetSpacing()
    if stats is None:
        from ctseg.formats.vertebra_stats import vertebra_statistics

        stats = vertebra_statistics(labels)
    if stats["levels"]:
        centre = np.median([r["centroid"] for r in stats["levels"]], axis=0)
        idx = np.round(lab_img.TransformPhysicalPointToContinuousIndex(centre.tolist()))
        ix, jy, _ = (int(np.clip(v, 0, n - 1)) for v, n in zip(idx, lab_img.GetSize(), strict=True))
    else:
        ix, jy = lab_img.GetSize()[0] // 2, lab_img.GetSize()[1] // 2
    lo, hi = WINDOW
    present = [r["label"] for r in stats["levels"]]
    lut = np.zeros((max(present, default=0) + 1, 4), np.float32)
    for v in present:
        lut[v] = (*color_of(v), 0.55)

    def gray(a: np.ndarray) -> np.ndarray:
        return np.clip((a.astype(np.float32) - lo) / (hi - lo), 0, 1)

    # sagittal: rows z (superior up), columns y (anterior left); coronal: columns x (right left)
    panels = [
        ("sagittal", gray(hu[:, :, ix]), np.array(lab[:, :, ix]), sz / sy),
        ("coronal", gray(hu[:, jy, :]), np.array(lab[:, jy, :]), sz / sx),
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
