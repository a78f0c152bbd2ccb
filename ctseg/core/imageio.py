"""Reading the NIfTI / NRRD files that enter a stage, with the checks every entry point needs.

Source scans go through ``ctseg.ingest.volume.read_image`` (DICOM checks, HU); every other image
that enters a stage (a label map, ``predict --ct``, a prediction given to ``metrics``) goes
through :func:`read_image_file`. Both check, before any voxel is read, that the header's declared
size is within ``ingest.max_voxels`` (``ctseg.core.limits``), and, after reading, that a float
image holds no NaN or infinity: ITK's NIfTI reader silently turns NaN and inf into 0, so NIfTI
float data is checked with nibabel, which keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.errors import InputError
from ctseg.core.limits import check_voxels

#: Every single-file image type ctseg reads: lower-case suffix -> format kind.
IMAGE_SUFFIXES: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
}
#: The image suffixes a raw case folder holds (``image<suffix>``, ``labels<suffix>``): what
#: ``fetch`` copies in and ``build_volume`` looks for.
RAW_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd")
_NIFTI = tuple(s for s, kind in IMAGE_SUFFIXES.items() if kind == "nifti")


def image_suffix(name: str) -> str | None:
    """The :data:`IMAGE_SUFFIXES` entry a file name ends with (case-insensitive), or None."""
    low = name.lower()
    return next((s for s in IMAGE_SUFFIXES if low.endswith(s)), None)


def strip_image_suffix(name: str) -> str:
    """A file name without its image suffix (unchanged when it has none)."""
    suf = image_suffix(name)
    return name[: -len(suf)] if suf else name


def _last_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def check_path_is_file(path: Path, case: str | None, what: str = "image") -> None:
    if path.is_dir():
        raise InputError(f"is a folder, expected a single {what} file", path=path, case=case)
    if not path.is_file():
        raise InputError(f"{what} file not found", path=path, case=case)


def read_header(path: str | Path, case: str | None = None) -> sitk.ImageFileReader:
    """The image's header only (size, spacing, pixel type); no voxel is read."""
    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(
            f"cannot read image header ({_last_line(exc)})", path=path, case=case
        ) from exc
    return reader


def check_nifti_finite(path: str | Path, case: str | None = None) -> None:
    """InputError when a float NIfTI holds NaN or infinite voxels (read through nibabel)."""
    import nibabel as nib

    path = Path(path)
    try:
        nimg = nib.load(str(path))
        if nimg.header.get_data_dtype().kind != "f":
            return
        data = np.asanyarray(nimg.dataobj)
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise InputError(
            f"cannot read NIfTI ({type(exc).__name__}: {exc})", path=path, case=case
        ) from exc
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise InputError(f"image holds {bad} NaN/infinite voxels", path=path, case=case)


def check_array_finite(img: sitk.Image, path: str | Path, case: str | None = None) -> None:
    """InputError when a float image holds NaN or infinite voxels (slice by slice, no copy)."""
    arr = sitk.GetArrayViewFromImage(img)
    if arr.dtype.kind not in "fc":
        return
    bad = 0
    for plane in arr.reshape(-1, *arr.shape[-2:]) if arr.ndim > 2 else [arr]:
        bad += int(np.count_nonzero(~np.isfinite(plane)))
    if bad:
        raise InputError(f"image holds {bad} NaN/infinite voxels", path=path, case=case)


def read_image_file(
    path: str | Path, case: str | None = None, *, ingest: Mapping | None = None
) -> sitk.Image:
    """Read one image file, checked: missing / folder / unreadable / too large / non-finite
    all become an :class:`InputError` naming the file."""
    path = Path(path)
    check_path_is_file(path, case)
    reader = read_header(path, case)
    check_voxels(reader.GetSize(), path, case=case, ingest=ingest)
    if path.name.lower().endswith(_NIFTI):
        check_nifti_finite(path, case)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read image: {_last_line(exc)}", path=path, case=case) from exc
    check_array_finite(img, path, case)
    return img
