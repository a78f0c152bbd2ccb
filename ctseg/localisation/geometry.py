"""The working grid of the localiser: canonical orientation, working spacing, world <-> index.

Why: a network sees arrays, centroids live in world mm. Every CT is first reoriented to LPS
(``sitk.DICOMOrient``: index x -> patient left, y -> posterior, z -> superior, i.e. the closest
axis permutation/flip of the scan to the identity direction), so a scan stored feet-first or
sagittally looks to the network like every other one, then resampled linearly to the working
spacing (coarse: localisation needs context, not detail). Points go through the *working*
image's own geometry (``TransformPhysicalPointToContinuousIndex`` and back), so origin,
spacing and any residual oblique direction are honoured and predictions come back in world
LPS mm of the original scan.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.errors import InputError
from ctseg.core.imageio import read_image_file
from ctseg.core.labels import VERSE_IDS, VERSE_NAMES
from ctseg.core.normalise import hu_to_float
from ctseg.inference.downsample import working_image

AIR_HU = -1024.0


def to_working(ct: sitk.Image, spacing_xyz: list[float] | tuple[float, ...]) -> sitk.Image:
    """The CT reoriented to LPS and resampled (linear, air outside) to ``spacing_xyz`` mm.

    An oblique scan keeps its (LPS-permuted) oblique grid: the network sees its patient
    tilted, which rotation augmentation teaches it (measured on 10-degree tilted phantoms:
    identification 96 % this way against 84 % after resampling onto world axes, whose tilted
    field-of-view edges and air wedges the model had not seen). The resampling is
    :func:`ctseg.inference.downsample.working_image`: the values of ``resample_to_spacing``
    (anti-aliased linear) computed only at the working grid's samples (a 512 x 512 x 300 CT
    to 8 mm in a fraction of a second instead of seconds)."""
    img = sitk.Cast(sitk.DICOMOrient(ct, "LPS"), sitk.sitkFloat32)
    return working_image(img, spacing_xyz, default=AIR_HU)


def crop_to_body(
    work: sitk.Image, threshold_hu: float = -500.0, margin_mm: float = 24.0
) -> sitk.Image:
    """The working image cut in-plane (x, y) to the bounding box of the body (voxels above
    ``threshold_hu`` on any slice) plus ``margin_mm``; z is kept whole. Geometry is kept
    (SimpleITK slicing moves the origin), so points map to the same world positions.

    Why: a CT's reconstruction circle is mostly air around the body; at 8 mm a 512 mm field
    of view is 64 x 64 voxels of which the body fills about a third, and every network step
    pays for all of them."""
    arr = sitk.GetArrayViewFromImage(work)
    body = arr > threshold_hu
    if not body.any():
        return work
    ys = np.flatnonzero(body.any(axis=(0, 2)))
    xs = np.flatnonzero(body.any(axis=(0, 1)))
    sx, sy = work.GetSpacing()[0], work.GetSpacing()[1]
    mx, my = int(np.ceil(margin_mm / sx)), int(np.ceil(margin_mm / sy))
    nx, ny = work.GetSize()[0], work.GetSize()[1]
    x0, x1 = max(0, int(xs[0]) - mx), min(nx, int(xs[-1]) + 1 + mx)
    y0, y1 = max(0, int(ys[0]) - my), min(ny, int(ys[-1]) + 1 + my)
    return work[x0:x1, y0:y1, :]


def inside(img: sitk.Image, world_xyz, margin_vox: float = 0.5) -> bool:
    """Whether a world point lies in the image's field of view (its voxels' extent, i.e. up
    to half a voxel beyond the outer voxel centres, by default)."""
    idx = np.array(img.TransformPhysicalPointToContinuousIndex([float(v) for v in world_xyz]))
    size = np.array(img.GetSize())
    return bool(np.all(idx >= -margin_vox) and np.all(idx <= size - 1 + margin_vox))


def working_array(img: sitk.Image, hu_window: list[float] | tuple[float, float]) -> np.ndarray:
    """Float32 ``[z, y, x]`` in [0, 1] (HU clipped to ``hu_window``; air -> 0)."""
    return hu_to_float(sitk.GetArrayFromImage(img), hu_window)


def world_to_index(img: sitk.Image, world_xyz) -> np.ndarray:
    """Continuous array index ``(z, y, x)`` of a world point (LPS mm)."""
    i, j, k = img.TransformPhysicalPointToContinuousIndex([float(v) for v in world_xyz])
    return np.array([k, j, i], dtype=float)


def index_to_world(img: sitk.Image, zyx) -> list[float]:
    """World point (LPS mm) of a continuous array index ``(z, y, x)``."""
    z, y, x = (float(v) for v in zyx)
    return [float(v) for v in img.TransformContinuousIndexToPhysicalPoint([x, y, z])]


def _world_of(item: dict) -> list[float]:
    if "world" in item:
        w = [float(v) for v in item["world"]]
        if len(w) != 3:
            raise ValueError("'world' must hold 3 coordinates")
        return w
    return [float(item["x"]), float(item["y"]), float(item["z"])]


def _label_of(item: dict) -> int:
    lab = item.get("label")
    if isinstance(lab, str) and not lab.strip().isdigit():
        if lab not in VERSE_IDS:
            raise ValueError(f"unknown vertebra name {lab!r}")
        return VERSE_IDS[lab]
    return int(lab)


def read_centroids(source, case: str | None = None) -> list[dict]:
    """Centroids as ``[{"label", "name", "world": [x, y, z]}]`` sorted by label.

    ``source``: a list of dicts, or the path of a centroids.json as written by
    :mod:`ctseg.ingest.volume` / :mod:`ctseg.phantom` (``label``, ``name``, ``x``, ``y``, ``z``
    in world LPS mm); entries may instead carry ``"world": [x, y, z]``, and ``label`` may be a
    VerSe name. A malformed file raises InputError naming the case and file.
    """
    path = None
    data = source
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read centroids ({exc})", path=path, case=case) from exc
    try:
        out = []
        for item in data:
            lab = _label_of(item)
            out.append(
                {"label": lab, "name": VERSE_NAMES.get(lab, str(lab)), "world": _world_of(item)}
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"invalid centroid entry ({exc})", path=path, case=case) from exc
    labels = [c["label"] for c in out]
    if len(set(labels)) != len(labels):
        raise InputError("a vertebra label occurs twice in the centroids", path=path, case=case)
    return sorted(out, key=lambda c: c["label"])


def read_ct(source, case: str | None = None) -> sitk.Image:
    """A CT given as a SimpleITK image or a path (NIfTI/NRRD/MHA via ctseg.core.imageio)."""
    if isinstance(source, sitk.Image):
        return source
    return read_image_file(source, case)


#: A point farther than this from the chain's median left-right (LPS x) position is not on
#: the spine: the column bends sideways by at most the population's 30 mm scoliosis (39 mm at
#: body scale 1.3), and the femoral heads, where the refiner fired on a default-run test case
#: and the chain named them L5 / sacrum / L6 in place of the true ones, lie 80-140 mm out.
MAX_LATERAL_MM = 60.0


def on_the_column(worlds: list, max_lateral_mm: float = MAX_LATERAL_MM) -> np.ndarray:
    """Boolean mask of the points whose LPS x lies within ``max_lateral_mm`` of the median x
    of all points (the spine being most of them)."""
    if len(worlds) < 2:
        return np.ones(len(worlds), dtype=bool)
    x = np.array([float(w[0]) for w in worlds])
    return np.abs(x - np.median(x)) <= max_lateral_mm
