"""The one way the workflow writes JSON: strict (no NaN / Infinity) and atomic.

Python's ``json`` writes bare ``NaN`` and ``Infinity`` by default, which no strict JSON reader
accepts and which hides a numeric failure upstream as a plausible-looking file. Every JSON file
ctseg writes goes through :func:`dumps` / :func:`write_json` (``allow_nan=False``); a
non-finite number becomes an error that names the output file and the key that held it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ctseg.core.atomic import write_text
from ctseg.core.errors import InputError


def _first_non_finite(obj, where: str = "$") -> str | None:
    """JSON path of the first NaN / infinite float in ``obj`` (None when all are finite)."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _first_non_finite(v, f"{where}.{k}")
            if found:
                return found
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            found = _first_non_finite(v, f"{where}[{i}]")
            if found:
                return found
    return None


def dumps(obj, *, indent: int | None = 1, what: str | os.PathLike = "JSON", **kw) -> str:
    """``json.dumps`` with ``allow_nan=False``; a non-finite number is an InputError naming
    the output (``what``) and the key that held it."""
    kw.setdefault("default", _numpy_default)
    try:
        return json.dumps(obj, indent=indent, allow_nan=False, **kw)
    except ValueError as exc:
        where = _first_non_finite(_plain(obj))
        raise InputError(
            f"refusing to write a non-finite number (NaN/Infinity) at {where or '?'}",
            path=what,
        ) from exc


def _numpy_default(obj):
    """numpy scalars and arrays are written as the Python numbers / lists they hold."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _plain(obj):
    """numpy scalars / arrays -> Python types, so the non-finite search sees them."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 1) -> None:
    """Write ``obj`` as strict JSON (plus a newline) to ``path`` atomically."""
    write_text(path, dumps(obj, indent=indent, what=Path(path)) + "\n")
