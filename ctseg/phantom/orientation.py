"""The 48 axis-aligned storage orientations and the lossless reorientation into them.

A code names, for index axes i, j, k in turn, the patient direction that axis points towards
(the DICOM / ITK ``DICOMOrient`` convention: ``LPS`` = identity, ``RAS`` flips x and y, ``PIL``
stores y first, then -z, then x). Reorienting permutes and flips array axes and rewrites origin,
spacing and direction to match, so every voxel keeps its world position: the same anatomy
stored 48 ways, as real cohorts (VerSe: PIR and others) store it.
"""

from __future__ import annotations

import itertools

import numpy as np

_AXIS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))

#: All 48 codes (permutations of the three patient axes times the signs), LPS first.
ORIENTATIONS: tuple[str, ...] = tuple(
    "".join(_LETTERS[a][0 if s > 0 else 1] for a, s in zip(perm, signs, strict=True))
    for perm in itertools.permutations(range(3))
    for signs in itertools.product((1, -1), repeat=3)
)


def axes_of(code: str) -> tuple[tuple[int, int], ...]:
    """(canonical axis, sign) for each stored index axis i, j, k of ``code``."""
    code = str(code).upper()
    if code not in ORIENTATIONS:
        raise ValueError(f"orientation {code!r} is not one of the 48 axis codes (e.g. LPS, RAS)")
    return tuple(_AXIS[c] for c in code)


def orientation_matrix(code: str) -> np.ndarray:
    """Signed permutation P (3x3): column n = stored axis n in canonical index axes."""
    p = np.zeros((3, 3))
    for n, (a, s) in enumerate(axes_of(code)):
        p[a, n] = s
    return p


def reorient(
    arr: np.ndarray, code: str, spacing, origin, direction
) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """Store ``arr`` (``[z, y, x]`` on the canonical grid) in orientation ``code``.

    Returns the array and its (spacing, origin, direction); world positions are unchanged.
    """
    ax = axes_of(code)
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    m = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    shape_xyz = np.array(arr.shape[::-1])
    # numpy axis of canonical axis c is 2 - c; stored axis n becomes numpy axis 2 - n
    out = np.transpose(arr, [2 - ax[2 - q][0] for q in range(3)])
    flips = tuple(2 - n for n, (_, s) in enumerate(ax) if s < 0)
    if flips:
        out = np.flip(out, axis=flips)
    out = np.ascontiguousarray(out)
    start = np.zeros(3)
    for a, s in ax:
        if s < 0:
            start[a] = shape_xyz[a] - 1
    new_origin = origin + (m * spacing[None, :]) @ start
    new_spacing = tuple(float(spacing[a]) for a, _ in ax)
    new_m = m @ orientation_matrix(code)
    new_m = np.where(np.abs(new_m) < 1e-12, 0.0, new_m)
    return (
        out,
        new_spacing,
        tuple(float(v) for v in np.where(np.abs(new_origin) < 1e-9, 0.0, new_origin)),
        tuple(float(v) for v in new_m.ravel()),
    )


def code_of(direction) -> str:
    """Nearest axis code of a direction matrix (columns = index axes in world)."""
    m = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    out = []
    for n in range(3):
        a = int(np.argmax(np.abs(m[:, n])))
        out.append(_LETTERS[a][0 if m[a, n] > 0 else 1])
    return "".join(out)
