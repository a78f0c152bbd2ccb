"""3D Slicer markups (``.mrk.json``): vertebra centroids as named fiducial control points.

Written to Slicer's markups schema v1.0.3: one markup of type ``Fiducial`` with
``coordinateSystem`` LPS (mm), one control point per vertebra labelled with its VerSe name, its
``id`` the VerSe id. Read back from LPS or RAS files (RAS negates x and y); a control point's
label is matched to a VerSe id by name ("L1", "vertebrae_L1", "L1 vertebra"), else by an integer
label; points whose ``positionStatus`` is "undefined" are skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from ctseg.core.atomic import write_text
from ctseg.core.errors import InputError
from ctseg.core.labels import VERSE_IDS, VERSE_NAMES
from ctseg.formats.colors import color_of

SCHEMA_URL = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
_IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
_NAMES_LOWER = {name.lower(): label for name, label in VERSE_IDS.items()}


def markups_document(centroids: Iterable[dict], name: str = "vertebrae") -> dict:
    """The markups JSON document for world-LPS centroid rows."""
    points = []
    for c in sorted(centroids, key=lambda r: int(r["label"])):
        label = int(c["label"])
        world = [float(v) for v in c["world"]] if "world" in c else [float(c[a]) for a in "xyz"]
        points.append(
            {
                "id": str(label),
                "label": VERSE_NAMES.get(label, str(label)),
                "description": f"VerSe id {label}",
                "associatedNodeID": "",
                "position": [round(v, 4) for v in world],
                "orientation": _IDENTITY,
                "selected": True,
                "locked": True,
                "visibility": True,
                "positionStatus": "defined",
            }
        )
    return {
        "@schema": SCHEMA_URL,
        "markups": [
            {
                "type": "Fiducial",
                "name": name,
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": True,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "controlPoints": points,
                "display": {
                    "visibility": True,
                    "opacity": 1.0,
                    "color": list(color_of(20)),
                    "selectedColor": list(color_of(20)),
                    "pointLabelsVisibility": True,
                    "textScale": 3.0,
                    "glyphType": "Sphere3D",
                    "glyphScale": 1.0,
                },
            }
        ],
    }


def write_markups(centroids: Iterable[dict], path: str | Path, name: str = "vertebrae") -> Path:
    """Write the Slicer markups file (atomically); returns ``path``."""
    write_text(path, json.dumps(markups_document(centroids, name), indent=2) + "\n")
    return Path(path)


def label_of(text: str) -> int | None:
    """VerSe id from a control point label ("L1", "vertebrae_L1", "L1 vertebra", "20")."""
    t = str(text).strip()
    if t.isdigit():
        return int(t)
    key = re.sub(r"^(vertebrae?[_ ]?)", "", t.lower())
    key = re.sub(r"([_ ](vertebra|center|centroid))$", "", key)
    return _NAMES_LOWER.get(key)


def parse_markups(data: object, *, path: str | Path) -> list[tuple[int, list[float]]]:
    """(label, world LPS mm) pairs from every fiducial markup of a parsed markups document."""
    if not isinstance(data, dict) or not isinstance(data.get("markups"), list):
        raise InputError("a Slicer markups file holds {'markups': [...]}", path=path)
    out = []
    for m in data["markups"]:
        if not isinstance(m, dict) or m.get("type") != "Fiducial":
            continue
        system = str(m.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise InputError(f"unknown markups coordinateSystem {system!r}", path=path)
        units = m.get("coordinateUnits", "mm")
        scale = {"mm": 1.0, "um": 1e-3}.get(units if isinstance(units, str) else units[0])
        if scale is None:
            raise InputError(f"unknown markups coordinateUnits {units!r}", path=path)
        for p in m.get("controlPoints", []):
            if p.get("positionStatus", "defined") == "undefined":
                continue
            label = label_of(p.get("label", "")) or label_of(p.get("id", ""))
            if label is None:
                raise InputError(
                    f"control point {p.get('label')!r} names no vertebra (expected e.g. 'L1')",
                    path=path,
                )
            try:
                x, y, z = (float(v) * scale for v in p["position"])
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(
                    f"control point {p.get('label')!r}: bad position ({exc})", path=path
                ) from exc
            out.append((label, [-x, -y, z] if system == "RAS" else [x, y, z]))
    return out
