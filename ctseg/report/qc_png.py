"""The QC picture of a segmented case (``qc.png``, delivered by :mod:`ctseg.formats.outputs`):
sagittal and coronal slices through the spine, levels coloured and named.

A reader checks a labelling at a glance on a mid-sagittal view (level order, gaps, a level
drawn twice) and a coronal one (lateral drift, scoliosis). Both images are put on an LPS
order first (axes transposed and flipped, ``DICOMOrient`` for strongly oblique scans), so
that superior is up and the patient's right is on the
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
from ctseg.formats.grid import axcodes

#: Display window in HU (bone).
WINDOW = (-250.0, 1250.0)


def _lps_view(img: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float], sitk.Image]:
    """The image's array as a ``[S, P, L]``-increasing view, its spacing along the view's x, y,
    z, and the image whose index space the view is (to locate points in it).

    Axis-aligned storage (any permutation / flip, mild obliquity) gives a view without a copy
    (transposes and flips only); a scan too oblique for axis codes is reoriented by SimpleITK.
    """
    try:
        codes = axcodes(img)
    except ValueError:
        img = sitk.DICOMOrient(img, "LPS")
        codes = ("L", "P", "S")
    arr = sitk.GetArrayViewFromImage(img)  # [k, j, i]
    world_axis = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
    src_for = [[world_axis[c] for c in codes].index(w) for w in range(3)]  # world -> index axis
    view = np.transpose(arr, [2 - src_for[w] for w in (2, 1, 0)])
    flips = tuple(
        slice(None, None, -1) if codes[src_for[w]] in "RAI" else slice(None) for w in (2, 1, 0)
    )
    sp = img.GetSpacing()
    return view[flips], (sp[src_for[0]], sp[src_for[1]], sp[src_for[2]]), img


def _view_index(img: sitk.Image, world: np.ndarray) -> tuple[int, int]:
    """(x, y) indices in the LPS view of ``img`` nearest to a world point."""
    codes = axcodes(img)
    world_axis = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
    idx = img.TransformPhysicalPointToContinuousIndex([float(v) for v in world])
    out = []
    for w in (0, 1):
        a = [world_axis[c] for c in codes].index(w)
        n = img.GetSize()[a]
        v = n - 1 - idx[a] if codes[a] in "RAI" else idx[a]
        out.append(int(np.clip(round(v), 0, n - 1)))
    return out[0], out[1]


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

    lab, spacing, lab_img = _lps_view(labels)  # [z (S), y (P), x (L)]
    hu, _, _ = _lps_view(ct)
    if lab.shape != hu.shape:
        raise ValueError(f"labels {lab.shape} and CT {hu.shape} are not on the same grid")
    sx, sy, sz = spacing
    if stats is None:
        from ctseg.formats.vertebra_stats import vertebra_statistics

        stats = vertebra_statistics(labels)
    if stats["levels"]:
        centre = np.median([r["centroid"] for r in stats["levels"]], axis=0)
        ix, jy = _view_index(lab_img, centre)
    else:
        ix, jy = lab.shape[2] // 2, lab.shape[1] // 2
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
