"""Centres of mass of label ids: the one centroid computation every stage uses.

:func:`label_centres` gives each label's centre of mass as a continuous (x, y, z) voxel index of
a numpy ``[z, y, x]`` label array; :func:`centroids_from_labels` maps those through a SimpleITK
image's geometry (``TransformContinuousIndexToPhysicalPoint``: spacing, origin and direction,
including non-axial or flipped directions) to world mm (DICOM patient LPS).

One ``scipy.ndimage.find_objects`` pass bounds every label; each centre is then the mean voxel
index inside that label's box, summed exactly in integers and divided once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ctseg.core.labels import label_name


def label_centres(arr: np.ndarray, labels: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Centre of mass of each label of a ``[z, y, x]`` array as a continuous (x, y, z) index.

    ``labels=None``: every non-zero id present. Otherwise the ids of ``labels`` that are present
    (absent or non-positive ids are left out; the caller decides whether that is an error).
    Keys are sorted by label.
    """
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.int64)
    if labels is None:
        objs = ndimage.find_objects(arr) if arr.size else []
        wanted = [i + 1 for i, b in enumerate(objs) if b is not None]
    else:
        ids = sorted({int(x) for x in labels if int(x) > 0})
        objs = ndimage.find_objects(arr, max_label=ids[-1]) if ids and arr.size else []
        wanted = [k for k in ids if k - 1 < len(objs) and objs[k - 1] is not None]
    out: dict[int, np.ndarray] = {}
    for k in wanted:
        sl = objs[k - 1]
        kk, jj, ii = np.nonzero(arr[sl] == k)
        n = kk.size
        sums = [int(v.sum()) + s.start * n for v, s in ((ii, sl[2]), (jj, sl[1]), (kk, sl[0]))]
        out[k] = np.array([s / n for s in sums], dtype=np.float64)
    return out


def centroids_from_labels(img: sitk.Image, labels: Sequence[int] | None = None) -> list[dict]:
    """Centre of mass of each label (world mm, LPS) as ``{"label", "name", "x", "y", "z"}``.

    ``labels`` restricts the output; by default every non-zero label present is returned.
    Sorted by label.
    """
    arr = sitk.GetArrayViewFromImage(img)
    out = []
    for lab, idx in label_centres(arr, labels).items():
        x, y, z = img.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in idx))
        out.append({"label": lab, "name": label_name(lab), "x": x, "y": y, "z": z})
    return out
