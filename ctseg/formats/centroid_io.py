"""Centroid files: ours (``centroids.json``) and one reader for every format a dataset ships.

Ours is a JSON list of ``{"label", "name", "x", "y", "z"}`` in world LPS mm, sorted by label
(the format of ``results/volumes/*/centroids.json``). :func:`read_centroids` reads ours, both
VerSe forms (:mod:`.verse_json`), BioMedia ``.lml`` (:mod:`.biomedia_lml`) and Slicer markups
(:mod:`.markups`), chooses the format by suffix and content, converts every point to world LPS
mm with the image's geometry and checks it: an unknown label, a label given twice or a point
outside the image is an InputError naming the file (and the case when given).
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
from ctseg.core.labels import VERSE_NAMES
from ctseg.formats import biomedia_lml, markups, verse_json
from ctseg.formats.grid import inside, world_to_index

FORMATS = ("ours", "verse", "verse_iso", "lml", "markups")


def world_of(c: dict) -> list[float]:
    """The world point of a centroid row, given as ``world`` or as ``x``/``y``/``z``."""
    if "world" in c:
        return [float(v) for v in c["world"]]
    return [float(c["x"]), float(c["y"]), float(c["z"])]


def centroid_row(label: int, world: Sequence[float], name: str | None = None) -> dict:
    """The common in-memory row: label, VerSe name, world LPS mm (also as x, y, z)."""
    w = [float(v) for v in world]
    return {
        "label": int(label),
        "name": name or VERSE_NAMES.get(int(label), str(int(label))),
        "world": w,
        "x": w[0],
        "y": w[1],
        "z": w[2],
    }


def centroids_json_text(centroids: Iterable[dict]) -> str:
    """Ours: sorted by label, mm rounded to 1e-4 (as the phantom writes it)."""
    rows = []
    for c in sorted(centroids, key=lambda r: int(r["label"])):
        x, y, z = world_of(c)
        label = int(c["label"])
        name = c.get("name") or VERSE_NAMES.get(label, str(label))
        rows.append(
            {"label": label, "name": name, "x": round(x, 4), "y": round(y, 4), "z": round(z, 4)}
        )
    return json.dumps(rows, indent=2) + "\n"


def write_centroids_json(centroids: Iterable[dict], path: str | Path) -> Path:
    """Write ours (atomically); returns ``path``."""
    write_text(path, centroids_json_text(centroids))
    return Path(path)


def detect_format(path: str | Path, data: object | None) -> str:
    """One of :data:`FORMATS` from the suffix, then the JSON content."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".lml"):
        return "lml"
    if isinstance(data, dict) and "markups" in data:
        return "markups"
    if isinstance(data, list):
        items = [d for d in data if isinstance(d, dict)]
        header = any("direction" in d for d in items)
        if header or any("X" in d for d in items):
            return "verse_iso" if name.endswith("iso-ctd.json") or not header else "verse"
        if items and all("x" in d for d in items):
            return "ours"
    raise InputError(
        "unknown centroid format (expected ours, VerSe JSON, BioMedia .lml or Slicer markups)",
        path=path,
    )


def _parse_ours(data: list, path: Path) -> list[tuple[int, list[float]]]:
    out = []
    for item in data:
        try:
            out.append((int(item["label"]), [float(item[a]) for a in "xyz"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"invalid centroid entry {item!r} ({exc})", path=path) from exc
    return out


def read_centroids(
    path: str | Path, image: sitk.Image, *, case: str | None = None, fmt: str | None = None
) -> list[dict]:
    """Centroids of ``path`` (any supported format) as rows with world LPS mm, sorted by label.

    Each row is ``{"label", "name", "world": [x, y, z], "x", "y", "z"}``. ``image`` gives the
    geometry the voxel-based formats are relative to and the extent every point must lie in
    (half a voxel of slack around the voxel centres). ``fmt`` forces a format.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read centroid file ({exc})", path=path, case=case) from exc
    data = None
    if not (path.name.lower().endswith(".lml") or fmt == "lml"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            # an .lml copied under another name (the case folder's centroids.json) is still read
            if fmt is None and biomedia_lml.looks_like_lml(text):
                fmt = "lml"
            else:
                raise InputError(f"not valid JSON ({exc})", path=path, case=case) from exc
    try:
        kind = fmt or detect_format(path, data)
        if kind == "lml":
            raw = biomedia_lml.parse_lml(text, image, path=path)
        elif kind == "markups":
            raw = markups.parse_markups(data, path=path)
        elif kind == "verse":
            raw = verse_json.parse_verse(data, image, iso=False, path=path)
        elif kind == "verse_iso":
            raw = verse_json.parse_verse(data, image, iso=True, path=path)
        elif kind == "ours":
            raw = _parse_ours(data, path)
        else:
            raise InputError(
                f"unknown centroid format {kind!r}; known: {', '.join(FORMATS)}", path=path
            )
        return check_centroids(raw, image, path=path)
    except InputError as exc:
        if case and not exc.case:
            raise exc.with_case(case) from exc
        raise


def check_centroids(
    raw: Iterable[tuple[int, Sequence[float]]], image: sitk.Image, *, path: Path
) -> list[dict]:
    """Rows from (label, world) pairs, refusing unknown / repeated labels and points
    outside ``image``."""
    rows: dict[int, dict] = {}
    for label, world in raw:
        if label not in VERSE_NAMES:
            raise InputError(f"label {label} is not a VerSe vertebra id", path=path)
        if label in rows:
            raise InputError(f"label {label} ({VERSE_NAMES[label]}) is given twice", path=path)
        if not all(math.isfinite(v) for v in world):
            raise InputError(
                f"{VERSE_NAMES[label]}: coordinates {list(world)} are not finite", path=path
            )
        idx = world_to_index(image, world)
        if not bool(inside(image, idx)):
            raise InputError(
                f"{VERSE_NAMES[label]} at world {np.round(world, 2).tolist()} mm (voxel "
                f"{np.round(idx, 1).tolist()}) lies outside the image (size {list(image.GetSize())})",
                path=path,
            )
        rows[label] = centroid_row(label, world)
    return [rows[k] for k in sorted(rows)]


def write_centroid_outputs(
    centroids: Iterable[dict], image: sitk.Image, out_dir: str | Path, stem: str = "centroids"
) -> dict[str, Path]:
    """Write the three delivered forms into ``out_dir``: ours (``<stem>.json``), VerSe
    subject-based (``<stem>_ctd.json``, PIR voxel coordinates) and Slicer markups
    (``<stem>.mrk.json``). Returns {"ours", "verse", "markups"} -> path."""
    rows = list(centroids)
    out = Path(out_dir)
    return {
        "ours": write_centroids_json(rows, out / f"{stem}.json"),
        "verse": verse_json.write_verse_centroids(rows, image, out / f"{stem}_ctd.json"),
        "markups": markups.write_markups(rows, out / f"{stem}.mrk.json"),
    }
