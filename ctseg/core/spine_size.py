"""A spine's measured size against the natural one (:mod:`ctseg.core.anatomy`).

Apart from the anatomy tables because the phantom generator imports those: the workflow reruns
every rule whose library modules changed, and a measurement only inference reads should not
regenerate the cohort.
"""

from __future__ import annotations

import numpy as np

from ctseg.core.anatomy import natural_step_mm
from ctseg.core.labels import SACRUM, spine_rank


def size_scale(points) -> float | None:
    """A spine's size relative to the natural one (body_scale 1): the median, over neighbours
    in its labelled points (the sacrum aside), of their distance over the natural step between
    their levels (:func:`natural_step_mm`); None with fewer than two such points.

    ``points``: ``[{"label", "world": [x, y, z]}]`` or ``{"label", "x", "y", "z"}``, world mm.
    Why the median of per-pair ratios: a level missed between two points still compares
    against the natural distance of the levels their labels name, and a misnamed chain is off
    by one level's change in size, a few per cent."""
    pts = []
    for c in points:
        lab = int(c["label"])
        if lab == SACRUM:
            continue
        w = c["world"] if "world" in c else (c["x"], c["y"], c["z"])
        pts.append((spine_rank(lab), lab, np.asarray(w, dtype=float)))
    pts.sort(key=lambda t: t[0])
    ratios = [
        float(np.linalg.norm(wb - wa)) / natural_step_mm(a, b)
        for (ra, a, wa), (rb, b, wb) in zip(pts, pts[1:], strict=False)
        if rb > ra
    ]
    return float(np.median(ratios)) if ratios else None
