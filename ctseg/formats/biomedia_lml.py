"""BioMedia spine dataset landmark files (``.lml``, Glocker et al.; seed 004's data).

Layout: an optional header line (``# ...``), then one tab-separated line per vertebra,
``id  name  x  y  z``, where ``name`` is the level with a suffix (``L1_center``), ``id`` is ten
times the level's index in C1..L6, S1, S2 (so C1 = 10, L1 = 200, S1 = 260), and x, y, z are
millimetres along the image's x, y, z index axes from the centre of voxel (0, 0, 0) (the
dataset's tools divide them by the spacing to get voxel indices). S1 becomes VerSe's sacrum
(26); S2 and below have no VerSe id and are skipped. Whitespace other than tabs is accepted.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.errors import InputError
from ctseg.core.labels import VERSE_IDS
from ctseg.formats.grid import index_to_world

#: Level names in id order (id = 10 * position), as the dataset's tools number them.
LML_LEVELS = [
    *[f"C{i}" for i in range(1, 8)],
    *[f"T{i}" for i in range(1, 13)],
    *[f"L{i}" for i in range(1, 7)],
    "S1",
    "S2",
]
_SKIPPED = re.compile(r"^(S[2-5]|CO\d*|COCC.*)$", re.IGNORECASE)


def verse_id_of(name: str, lml_id: str) -> int | None:
    """VerSe id of an .lml row (None: a level VerSe does not label, e.g. S2)."""
    level = re.sub(r"[_\- ](center|centre|centroid|body)$", "", name.strip(), flags=re.IGNORECASE)
    level = level.upper()
    if level == "S1":
        return VERSE_IDS["sacrum"]
    if level in VERSE_IDS:
        return VERSE_IDS[level]
    if _SKIPPED.match(level):
        return None
    try:
        n = int(float(lml_id))
    except ValueError:
        n = -1
    if n > 0 and n % 10 == 0 and n // 10 <= len(LML_LEVELS):
        return verse_id_of(LML_LEVELS[n // 10 - 1], "")
    raise InputError(f"unknown vertebra {name!r} (id {lml_id})")


def looks_like_lml(text: str) -> bool:
    """Whether every non-comment line after an optional header is ``id name x y z``."""
    rows = [
        ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if rows and len(rows[0]) != 5:
        rows = rows[1:]
    if not rows:
        return False
    try:
        for r in rows:
            if len(r) != 5:
                return False
            [float(v) for v in (r[0], *r[2:])]
    except ValueError:
        return False
    return True


def parse_lml(text: str, image: sitk.Image, *, path: str | Path) -> list[tuple[int, list[float]]]:
    """(label, world LPS mm) pairs from the text of an .lml file."""
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        fields = s.split("\t") if "\t" in s else s.split()
        fields = [f.strip() for f in fields if f.strip()]
        if len(fields) != 5:
            if lineno == 1:
                continue  # a header line without '#'
            raise InputError(f"line {lineno}: expected 'id name x y z', got {line!r}", path=path)
        lml_id, name, *xyz = fields
        try:
            mm = np.array([float(v) for v in xyz])
        except ValueError as exc:
            if lineno == 1:
                continue
            raise InputError(f"line {lineno}: bad coordinates in {line!r}", path=path) from exc
        try:
            label = verse_id_of(name, lml_id)
        except InputError as exc:
            raise InputError(f"line {lineno}: {exc.reason}", path=path) from exc
        if label is None:
            continue
        out.append((label, index_to_world(image, mm / spacing).tolist()))
    return out
