"""VerSe centroid JSON, both forms, in and out.

Subject-based release (VerSe'19/'20 restructured, ``*_seg-subreg_ctd.json``, the form the VerSe
maintainers recommend): a list whose first entry is ``{"direction": ["P", "I", "R"]}`` (nibabel
axis codes) followed by ``{"label": id, "X": .., "Y": .., "Z": ..}`` in *voxel* coordinates of
the image reoriented to those codes (its own spacing; a flipped axis of n voxels maps i to
n - 1 - i, as nibabel reorients). Entries holding NaN are skipped, as the VerSe tools do.

MICCAI 2020 challenge form (``*_iso-ctd.json``): the same entries without the ``direction``
header, in *millimetres* (the challenge's 1 mm isotropic space) along the P, I, R axes from
the image's corner voxel centre, i.e. PIR voxel coordinates times the spacing along each of
those axes. A ``direction`` header, when such a file has one, is honoured.

Flips follow nibabel (i -> n - 1 - i), which is how the VerSe tools compute centroids from a
reoriented mask; their helper that maps centroids back (``reorient_centroids_to``), and some
challenge code after it, flip with n - c instead. The two differ by one voxel along each
flipped axis (1 mm in the iso files), below the annotations' own scatter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.atomic import write_text
from ctseg.core.errors import InputError
from ctseg.formats.grid import (
    index_to_oriented,
    index_to_world,
    oriented_spacing,
    oriented_to_index,
    world_to_index,
)

#: The orientation VerSe's centroid files use.
VERSE_AXCODES: tuple[str, str, str] = ("P", "I", "R")


def _world(c: dict) -> list[float]:
    return [float(v) for v in c["world"]] if "world" in c else [float(c[a]) for a in "xyz"]


def verse_entries(
    centroids: Iterable[dict],
    image: sitk.Image,
    codes: Sequence[str] = VERSE_AXCODES,
    decimals: int = 2,
) -> list[dict]:
    """Subject-based entries (header first) for world-LPS centroid rows on ``image``."""
    out: list[dict] = [{"direction": [str(c) for c in codes]}]
    for c in sorted(centroids, key=lambda r: int(r["label"])):
        vox = index_to_oriented(image, world_to_index(image, _world(c)), codes)
        x, y, z = (round(float(v), decimals) for v in vox)
        out.append({"label": int(c["label"]), "X": x, "Y": y, "Z": z})
    return out


def write_verse_centroids(
    centroids: Iterable[dict],
    image: sitk.Image,
    path: str | Path,
    codes: Sequence[str] = VERSE_AXCODES,
) -> Path:
    """Write the subject-based VerSe centroid JSON (voxel coordinates, ``codes`` header)."""
    write_text(path, json.dumps(verse_entries(centroids, image, codes)) + "\n")
    return Path(path)


def parse_verse(
    data: object, image: sitk.Image, *, iso: bool, path: str | Path
) -> list[tuple[int, list[float]]]:
    """(label, world LPS mm) pairs from a parsed VerSe centroid JSON.

    ``iso`` selects the MICCAI 2020 form (millimetres, default PIR); otherwise the
    subject-based form, whose ``direction`` header is required.
    """
    if not isinstance(data, list):
        raise InputError("a VerSe centroid file holds a JSON list", path=path)
    codes: Sequence[str] | None = None
    points: list[tuple[int, list[float]]] = []
    for item in data:
        if not isinstance(item, dict):
            raise InputError(f"unexpected VerSe centroid entry {item!r}", path=path)
        if "direction" in item:
            codes = [str(c).upper() for c in item["direction"]]
            continue
        try:
            label = int(item["label"])
            xyz = [float(item[a]) for a in ("X", "Y", "Z")]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"invalid VerSe centroid entry {item!r} ({exc})", path=path) from exc
        if any(math.isnan(v) for v in xyz):
            continue  # VerSe marks unannotated levels with NaN
        points.append((label, xyz))
    if codes is None:
        if not iso:
            raise InputError(
                'VerSe subject-based centroids need a {"direction": [...]} entry', path=path
            )
        codes = VERSE_AXCODES
    try:
        scale = oriented_spacing(image, codes) if iso else np.ones(3)
        out = []
        for label, xyz in points:
            idx = oriented_to_index(image, np.asarray(xyz) / scale, codes)
            out.append((label, index_to_world(image, idx).tolist()))
    except ValueError as exc:
        raise InputError(f"cannot use axis codes {list(codes)} ({exc})", path=path) from exc
    return out
