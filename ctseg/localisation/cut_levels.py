"""Which chain-end levels a field of view shows enough of to name.

A label map holds a vertebra only where more than half of it lies in the scan (the phantom's
truth, :func:`ctseg.phantom.skeleton.visible_levels`; a cropped scan's cut neighbour is bone
with no label), so its centroid file has no point for the neighbour the edge cuts. The
localiser sometimes marks that neighbour anyway: the centre of its visible sliver, a few
millimetres inside the edge. Named, it is a false positive, and the segmentation models split
the true end level at the plane halfway to it (a test phantom's L4: level Dice 0.56, with an
extra "L5" of Dice 0).

What tells them apart is how far inside the scan the point lies, in steps of this spine: when
exactly half of a level is in view, the centre of what is visible lies about a quarter of its
height, a fifth of a step, from the edge. On the localiser's namings of 225 held-out draws
(386 chain ends, README *Centroid-only training*), every end closer than 0.2 size-scaled
natural steps to the edge was a cut neighbour (8, at 0.08-0.17); between 0.2 and 0.28 lay two
cut neighbours and two true levels, which no distance tells apart; beyond 0.39 every end was
a vertebra in view (16 of them under a wrong name: a misnamed chain, not a cut).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ctseg.core.anatomy import L6, T13, natural_step_mm
from ctseg.core.labels import SACRUM, SPINE_ORDER, spine_rank
from ctseg.core.spine_size import size_scale

#: An end level's centre must lie this many of its (size-scaled, natural) steps inside the scan.
MIN_END_MARGIN_STEPS = 0.2


def edge_margin_mm(image: sitk.Image, world_xyz) -> float:
    """Distance (mm) of a world point to the nearest face of the image's voxel extent (half a
    voxel beyond the outer voxel centres), measured along the image axes; negative outside."""
    idx = np.asarray(image.TransformPhysicalPointToContinuousIndex([float(v) for v in world_xyz]))
    size = np.asarray(image.GetSize(), dtype=float)
    sp = np.asarray(image.GetSpacing(), dtype=float)
    return float(min(((idx + 0.5) * sp).min(), ((size - 0.5 - idx) * sp).min()))


def one_step_mm(level: int, towards: int) -> float:
    """Natural step (body_scale 1) from ``level`` to its neighbour in the direction of
    ``towards`` (transitional levels count only where they are one of the two)."""
    order = [
        x for x in SPINE_ORDER if x != SACRUM and (x not in (L6, T13) or x in (level, towards))
    ]
    i = order.index(level)
    j = i + 1 if spine_rank(towards) > spine_rank(level) else i - 1
    return natural_step_mm(level, order[j] if 0 <= j < len(order) else towards)


def _world(p: dict) -> np.ndarray:
    return np.asarray(p["world"] if "world" in p else [p[a] for a in "xyz"], dtype=float)


def drop_cut_ends(
    points: list[dict], image: sitk.Image, min_margin: float = MIN_END_MARGIN_STEPS
) -> list[dict]:
    """``points`` without a chain end whose centre lies closer than ``min_margin`` of its
    size-scaled natural step to the scan's edge: a neighbour the field of view cuts, which
    the label map does not hold. Only the two ends of the chain (the sacrum aside; with a
    sacrum point, only the top end) are tested, each once; a chain of fewer than two vertebra
    points is returned unchanged.

    ``points``: ``[{"label", "world": [x, y, z]}]`` or ``{"label", "x", "y", "z"}``, world mm.
    """
    chain = sorted(
        (p for p in points if int(p["label"]) != SACRUM), key=lambda p: spine_rank(p["label"])
    )
    if len(chain) < 2:
        return list(points)
    scale = size_scale(chain) or 1.0
    ends = [(chain[0], chain[1])]
    if not any(int(p["label"]) == SACRUM for p in points):
        ends.append((chain[-1], chain[-2]))
    dropped = {
        id(end)
        for end, inner in ends
        if edge_margin_mm(image, _world(end))
        < min_margin * scale * one_step_mm(int(end["label"]), int(inner["label"]))
    }
    return [p for p in points if id(p) not in dropped]
