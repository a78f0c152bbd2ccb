"""Natural adult vertebral sizes per VerSe id: one table for the phantom and for QC.

Body height, width and depth, disc height below each level, canal, pedicle, lamina and process
sizes at body_scale 1, piecewise linear between tabulated levels (adult averages of the
morphometry literature, rounded). The phantom draws its anatomy from them
(:mod:`ctseg.phantom.layout`); quality control reads the expected centre-to-centre step
between two levels from them, so that a lumbar step is not judged against a cervical one.
Transitional levels borrow their neighbours' sizes (T13 between T12 and L1, L6 like L5).
"""

from __future__ import annotations

import numpy as np

from ctseg.core.labels import SACRUM, SPINE_ORDER, VERSE_IDS, spine_rank

L6, T13 = VERSE_IDS["L6"], VERSE_IDS["T13"]

DIMS: dict[str, dict[int, float]] = {
    "H": {1: 10, 3: 13, 7: 14, 8: 16, 19: 23, 20: 25, 24: 27},  # body height
    "W": {1: 20, 7: 26, 8: 27, 19: 40, 20: 42, 24: 50},  # body width (left-right)
    "D": {1: 15, 7: 17, 8: 17, 19: 29, 20: 31, 24: 35},  # body depth (antero-posterior)
    "disc": {1: 4, 7: 5, 8: 4, 19: 6, 20: 8, 23: 11, 24: 10},  # disc below this level
    "canal_rx": {1: 12, 7: 12, 8: 8.5, 19: 9.5, 20: 11, 24: 12.5},
    "canal_ry": {1: 8, 7: 8, 8: 7.5, 19: 8, 20: 8.5, 24: 9},
    "ped_rx": {1: 3, 7: 3, 8: 3.5, 19: 4.5, 20: 5, 24: 8},
    "ped_rz": {1: 3.5, 7: 4, 8: 5.5, 19: 8, 20: 8, 24: 8},
    "lamina": {1: 4, 7: 4, 8: 4.5, 19: 5.5, 20: 6, 24: 7},
    "sp_len": {1: 8, 7: 30, 8: 32, 19: 28, 20: 30, 24: 26},
    "sp_angle": {1: 10, 7: 25, 8: 30, 13: 55, 19: 25, 20: 12, 24: 8},  # degrees below horizontal
    "sp_hx": {1: 3, 8: 3.5, 19: 4, 20: 4.5, 24: 5},
    "sp_hz": {1: 4, 8: 5, 19: 7, 20: 9, 24: 10},
    "tp_len": {1: 8, 7: 10, 8: 24, 14: 20, 19: 10, 20: 16, 22: 25, 24: 20},
    "tp_r": {1: 3, 8: 5, 19: 4.5, 20: 4, 24: 4.5},
    "tp_angle": {1: 0, 8: 30, 19: 20, 20: 5, 24: 5},  # degrees towards posterior
}
#: Where a transitional level takes its sizes from (a fractional tabulated level).
DIM_LEVEL = {T13: 19.5, L6: 24.0}


def dim(name: str, level: int | float) -> float:
    """Natural size ``name`` of VerSe id ``level`` (transitional ids map to their neighbours)."""
    table = DIMS[name]
    xs = np.array(sorted(table), dtype=float)
    lev = DIM_LEVEL.get(level, level) if isinstance(level, int) else level
    return float(np.interp(lev, xs, [table[int(x)] for x in xs]))


def natural_step_mm(upper: int, lower: int) -> float:
    """Natural distance between two levels' body centres along the spine (body_scale 1): half
    of each body, every disc and every whole body between them. Levels between ``upper`` and
    ``lower`` that a standard spine has count; transitional ones (T13, L6) only where they are
    one of the two. Why: cervical steps are about 17 mm and lumbar ones about 36 mm, so a
    case's median step alone makes every lumbar step of a neck-to-pelvis scan look long."""
    if SACRUM in (upper, lower):
        raise ValueError("the sacrum has no body centre step (its frame sits on S1)")
    a, b = sorted((int(upper), int(lower)), key=spine_rank)
    chain = [x for x in SPINE_ORDER if spine_rank(a) < spine_rank(x) < spine_rank(b)]
    chain = [a, *(x for x in chain if x not in (L6, T13, SACRUM)), b]
    pairs = zip(chain, chain[1:], strict=False)
    return float(sum(dim("H", x) / 2 + dim("disc", x) + dim("H", y) / 2 for x, y in pairs))


def natural_body_size(level: int) -> float:
    """A level's natural body box, height x width x depth (mm3, body_scale 1): a relative
    size, for comparing neighbours' volumes (a lumbar level's whole volume grows with its
    body: L5's box is 1.14 x the median of L3's and L4's, T12's 0.78 x L1's and L2's)."""
    if int(level) in (SACRUM, 1):
        raise ValueError("the sacrum and C1 (a ring) have no vertebral body size here")
    return dim("H", level) * dim("W", level) * dim("D", level)
