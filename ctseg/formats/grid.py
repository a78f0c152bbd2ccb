"""Image geometry shared by the format modules: index <-> world (LPS mm) and axis codes.

Everything here follows SimpleITK: a continuous index (i, j, k) runs along the image's x, y, z
axes with voxel centres at integers; world = origin + D @ (spacing * index), D's columns being
the index axes in patient LPS. Axis codes use nibabel's convention (the letter an index axis
points *towards*), so the VerSe tools' ``("P", "I", "R")`` means exactly what they mean there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

#: Letter an index axis points towards, per LPS world axis and sign.
_POSITIVE = "LPS"
_NEGATIVE = "RAI"
OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}


def direction_matrix(img: sitk.Image) -> np.ndarray:
    """3 x 3 direction cosines, columns = the index axes in world (LPS)."""
    return np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)


def index_to_world(img: sitk.Image, index: np.ndarray | Sequence) -> np.ndarray:
    """Continuous indices (..., 3) in (i, j, k) order -> world LPS mm (..., 3)."""
    idx = np.asarray(index, dtype=np.float64)
    m = direction_matrix(img) * np.asarray(img.GetSpacing(), dtype=np.float64)
    return idx @ m.T + np.asarray(img.GetOrigin(), dtype=np.float64)


def world_to_index(img: sitk.Image, world: np.ndarray | Sequence) -> np.ndarray:
    """World LPS mm (..., 3) -> continuous indices (..., 3) in (i, j, k) order."""
    pts = np.asarray(world, dtype=np.float64) - np.asarray(img.GetOrigin(), dtype=np.float64)
    m = direction_matrix(img) * np.asarray(img.GetSpacing(), dtype=np.float64)
    return pts @ np.linalg.inv(m).T


def inside(img: sitk.Image, index: np.ndarray | Sequence, margin: float = 0.5) -> np.ndarray:
    """Whether continuous indices lie inside the image (voxel extents, ``margin`` voxels)."""
    idx = np.asarray(index, dtype=np.float64)
    size = np.asarray(img.GetSize(), dtype=np.float64)
    return np.all((idx >= -margin) & (idx <= size - 1 + margin), axis=-1)


def axcodes(img: sitk.Image) -> tuple[str, str, str]:
    """Axis codes of the image's index axes, e.g. identity direction -> ("L", "P", "S").

    Each index axis gets the world axis it is closest to; an oblique image whose two index
    axes are closest to the same world axis has no unambiguous code and raises ValueError.
    """
    d = direction_matrix(img)
    codes = []
    used = set()
    for j in range(3):
        a = int(np.argmax(np.abs(d[:, j])))
        if a in used:
            raise ValueError(f"direction {img.GetDirection()} has no unambiguous axis codes")
        used.add(a)
        codes.append(_POSITIVE[a] if d[a, j] > 0 else _NEGATIVE[a])
    return tuple(codes)  # type: ignore[return-value]


def _axis_map(img: sitk.Image, codes: Sequence[str]) -> list[tuple[int, bool]]:
    """For each target axis: (source index axis, flipped?)."""
    codes = [str(c).upper() for c in codes]
    if len(codes) != 3 or {c if c in _POSITIVE else OPPOSITE.get(c) for c in codes} != set("LPS"):
        raise ValueError(f"axis codes {tuple(codes)} must name each of L/R, P/A, S/I once")
    src = axcodes(img)
    out = []
    for c in codes:
        for s, code in enumerate(src):
            if code == c:
                out.append((s, False))
                break
            if code == OPPOSITE[c]:
                out.append((s, True))
                break
    return out


def index_to_oriented(
    img: sitk.Image, index: np.ndarray | Sequence, codes: Sequence[str]
) -> np.ndarray:
    """Continuous (i, j, k) -> voxel coordinates of the image reoriented to ``codes``.

    Reorienting permutes axes and flips some; a flipped axis of n voxels maps i -> n - 1 - i
    (nibabel's ``apply_orientation``), so voxel centres stay on integers.
    """
    idx = np.asarray(index, dtype=np.float64)
    size = img.GetSize()
    cols = []
    for s, flip in _axis_map(img, codes):
        cols.append(size[s] - 1 - idx[..., s] if flip else idx[..., s])
    return np.stack(cols, axis=-1)


def oriented_to_index(
    img: sitk.Image, coords: np.ndarray | Sequence, codes: Sequence[str]
) -> np.ndarray:
    """Inverse of :func:`index_to_oriented`."""
    c = np.asarray(coords, dtype=np.float64)
    size = img.GetSize()
    out = np.empty(c.shape, dtype=np.float64)
    for t, (s, flip) in enumerate(_axis_map(img, codes)):
        out[..., s] = size[s] - 1 - c[..., t] if flip else c[..., t]
    return out


def oriented_spacing(img: sitk.Image, codes: Sequence[str]) -> np.ndarray:
    """Voxel spacing along the axes of the image reoriented to ``codes``."""
    sp = img.GetSpacing()
    return np.array([sp[s] for s, _ in _axis_map(img, codes)], dtype=np.float64)


def label_array(img: sitk.Image, what: str = "labels") -> np.ndarray:
    """The ``[z, y, x]`` integer array of a 3-D label image; anything else is a ValueError."""
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{what} must be a 3-D scalar image, got {img.GetDimension()}-D")
    arr = sitk.GetArrayFromImage(img)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"{what} must hold integer label ids")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what} holds negative label ids")
    return arr
