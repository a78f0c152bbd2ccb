"""Reading the NIfTI / NRRD files that stages hand to each other.

Source scans go through ``ctseg.ingest.volume.read_image`` (DICOM checks, NaN checks, HU); files the
workflow wrote itself only need a plain read whose failure still names the case and the file.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from ctseg.core.errors import InputError


def read_image_file(path: str | Path, case: str | None = None) -> sitk.Image:
    """Read one image file; a missing or unreadable file becomes an :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("image file not found", path=path, case=case)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read image: {exc}", path=path, case=case) from exc
