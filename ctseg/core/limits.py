"""Resource limits checked *before* reading: voxels declared by a header, bytes an archive
declares it will unpack to, bytes a download may bring.

A 1.5 MB ``.nii.gz`` may declare a 1.5 GiB volume and a 1 MB zip may inflate to gigabytes;
the only cheap defence is to compare what the header declares with a limit before allocating.
The defaults fit real CTs (a 1024 x 1024 x 2000 scan is 2.1 G voxels, just over the default;
raise it for such scans). They are set under ``ingest:`` in config.yaml (``max_voxels``,
``max_unpacked_bytes``, ``max_download_bytes``) or, for any command and rule, by the
environment variables ``CTSEG_MAX_VOXELS``, ``CTSEG_MAX_UNPACKED_BYTES`` and
``CTSEG_MAX_DOWNLOAD_BYTES`` (the environment wins, so a one-off large case needs no config
edit).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from ctseg.core.errors import ConfigError, InputError

DEFAULTS: dict[str, int] = {
    "max_voxels": 2_000_000_000,
    "max_unpacked_bytes": 20 * 2**30,
    "max_download_bytes": 20 * 2**30,
}
_ENV = {key: "CTSEG_" + key.upper() for key in DEFAULTS}


def limit(key: str, ingest: Mapping | None = None) -> int:
    """The limit ``key``: environment variable, else ``ingest[key]``, else the default."""
    if key not in DEFAULTS:
        raise KeyError(key)
    raw = os.environ.get(_ENV[key])
    source = f"environment variable {_ENV[key]}"
    if raw is None and ingest and ingest.get(key) is not None:
        raw, source = ingest[key], f"ingest.{key}"
    if raw is None:
        return DEFAULTS[key]
    try:
        value = int(float(raw))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source} must be a positive integer, not {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"{source} must be a positive integer, not {raw!r}")
    return value


def check_voxels(
    shape, path: str | Path, *, case: str | None = None, ingest: Mapping | None = None
) -> None:
    """InputError when a declared image ``shape`` exceeds ``max_voxels``."""
    shape = [int(s) for s in shape]
    n = math.prod(shape)
    top = limit("max_voxels", ingest)
    if n > top:
        raise InputError(
            f"image declares {' x '.join(map(str, shape))} = {n:,} voxels, over the limit of "
            f"{top:,} (raise ingest.max_voxels or {_ENV['max_voxels']} if this scan is real)",
            path=path,
            case=case,
        )


def check_bytes(
    n: int,
    key: str,
    path: str | Path,
    what: str,
    *,
    case: str | None = None,
    ingest: Mapping | None = None,
) -> None:
    """InputError when ``n`` bytes of ``what`` exceed the byte limit ``key``."""
    top = limit(key, ingest)
    if n > top:
        raise InputError(
            f"{what} is {n:,} bytes, over the limit of {top:,} (raise ingest.{key} or {_ENV[key]})",
            path=path,
            case=case,
        )
