"""Read any raw source (DICOM folder, NIfTI, NRRD) to an HU image, and build the case volume.

One entry point, ``read_image``, serves DICOM folders and single-file volumes alike so that
stats, metal labelling and conversion see exactly the same voxels and geometry. NIfTI and NRRD
go through SimpleITK, which converts NIfTI's RAS qform/sform and NRRD's space directions /
origin to LPS; nothing is reoriented afterwards.

``build_volume`` writes the contract files of a case: ``ct.nii.gz`` (int16 HU),
``labels.nii.gz`` (uint8 VerSe ids on exactly the CT grid) and ``centroids.json``. A case
without labels gets an all-zero label map on the CT grid: it is an unannotated case, usable
for stats, metal and DRR, and evaluation treats it as having no vertebrae.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.atomic import atomic_paths
from ctseg.core.centroids import centroids_from_labels
from ctseg.core.errors import InputError
from ctseg.core.grid import same_grid
from ctseg.core.imageio import (
    IMAGE_SUFFIXES,
    RAW_SUFFIXES,
    image_suffix,
    read_image_file,
    strip_image_suffix,
)
from ctseg.core.jsonio import dumps
from ctseg.core.labels import apply_label_map
from ctseg.ingest.dicomio import read_dicom_series


def source_kind(path: Path) -> str:
    """'dicom' for folders, else 'nifti' / 'nrrd' / 'metaimage' by extension."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    return IMAGE_SUFFIXES.get(image_suffix(path.name), "dicom")  # else a single DICOM file


def read_image(
    path: Path,
    *,
    case: str | None = None,
    series_uid: str | None = None,
    ingest: dict | None = None,
    progress: bool = True,
) -> tuple[sitk.Image, dict]:
    """Read a DICOM folder, NIfTI or NRRD as an HU image plus a header metadata dict.

    DICOM is ordered and checked by ``ctseg.ingest.dicomio``; ``ingest`` holds the policies
    (``uneven_spacing``, ``gantry_tilt``: error | resample; ``modality``: expected modality,
    default CT; ``max_voxels``: see ``ctseg.core.limits``). Volumes keep exactly the geometry
    SimpleITK reads. A header declaring more voxels than ``max_voxels`` is refused before any
    voxel is read; NaN or infinite voxels are an InputError: they would poison every statistic
    and training batch downstream (``ctseg.core.imageio.read_image_file``).
    """
    path = Path(path)
    ingest = ingest or {}
    if not path.exists():
        raise InputError("input does not exist", path=path, case=case)
    kind = source_kind(path)
    if kind == "dicom":
        return read_dicom_series(
            path,
            case=case,
            series_uid=series_uid,
            ingest=ingest,
            expected_modality=ingest.get("modality", "CT"),
            progress=progress,
        )
    img = read_image_file(path, case, ingest=ingest)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"expected a scalar image, found {img.GetNumberOfComponentsPerPixel()} components",
            path=path,
            case=case,
        )
    if img.GetDimension() != 3:
        raise InputError(f"expected a 3D image, found {img.GetDimension()}D", path=path, case=case)
    size = img.GetSize()
    meta = {
        "source_kind": kind,
        "modality": "",
        "manufacturer": "",
        "model": "",
        "kvp": None,
        "kernel": "",
        "n_slices": int(size[2]),
        "rows": int(size[1]),
        "cols": int(size[0]),
        "slice_spacing_mm": float(img.GetSpacing()[2]),
        "slice_thickness_mm": None,
        "warnings": [],
    }
    return img, meta


def find_raw_source(raw_dir: Path, *, case: str | None = None) -> Path:
    """The single image source of a raw case folder (``dicom/``, ``image.nii[.gz]`` or ``image.nrrd``)."""
    raw_dir = Path(raw_dir)
    found = [
        raw_dir / n
        for n in ("dicom", *(f"image{s}" for s in RAW_SUFFIXES))
        if (raw_dir / n).exists()
    ]
    if not found:
        raise InputError(
            "raw case holds no dicom/, image.nii.gz, image.nii or image.nrrd",
            path=raw_dir,
            case=case,
        )
    if len(found) > 1:
        raise InputError(
            f"raw case holds several image sources: {[p.name for p in found]}",
            path=raw_dir,
            case=case,
        )
    return found[0]


def find_raw_labels(raw_dir: Path) -> Path | None:
    for name in (f"labels{s}" for s in RAW_SUFFIXES):
        if (Path(raw_dir) / name).is_file():
            return Path(raw_dir) / name
    return None


def same_lattice(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether ``b`` holds exactly the voxel centres of ``a`` in another axis order or sense.

    Label maps written by other tools often store the CT's voxels with flipped or permuted
    axes (e.g. the shared real labels flip y). Mapping them onto the CT grid is then an exact
    re-indexing, not a resampling, so it is always allowed.
    """
    if a.GetDimension() != 3 or b.GetDimension() != 3:
        return False
    ma = np.reshape(a.GetDirection(), (3, 3)) @ np.diag(a.GetSpacing())
    mb = np.reshape(b.GetDirection(), (3, 3)) @ np.diag(b.GetSpacing())
    perm = np.linalg.solve(mb, ma)  # a index -> b index (linear part)
    if not np.allclose(perm, np.round(perm), atol=1e-4):
        return False
    perm = np.round(perm)
    if not (np.all(np.abs(perm).sum(axis=0) == 1) and np.all(np.abs(perm).sum(axis=1) == 1)):
        return False
    offset = np.linalg.solve(mb, np.subtract(a.GetOrigin(), b.GetOrigin()))
    if not np.allclose(offset, np.round(offset), atol=1e-3):
        return False
    corners = np.array(
        [
            [i, j, k]
            for i in (0, a.GetSize()[0] - 1)
            for j in (0, a.GetSize()[1] - 1)
            for k in (0, a.GetSize()[2] - 1)
        ]
    )
    idx = np.round(corners @ perm.T + offset)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    return bool(np.all(lo == 0) and np.all(hi == np.array(b.GetSize()) - 1))


def labels_on_grid(
    labels: sitk.Image, ct: sitk.Image, *, case: str | None, path: Path | None, resample: bool
) -> sitk.Image:
    """Labels on exactly the CT grid: checked, or nearest-neighbour resampled when allowed.

    Same grid within tolerance: the CT geometry is copied onto the labels. Same voxel lattice
    in another axis order (``same_lattice``): exact re-indexing. Otherwise an InputError, or a
    nearest-neighbour resampling when ``resample`` is true.
    """
    ok, why = same_grid(ct, labels)
    if ok:
        out = sitk.Image(labels)
        out.CopyInformation(ct)
        return out
    if same_lattice(ct, labels):
        return sitk.Resample(
            labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID()
        )
    if not resample:
        raise InputError(
            f"label map is not on the CT grid ({why}); set ingest.resample_labels: true to resample",
            path=path,
            case=case,
        )
    return sitk.Resample(
        labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID()
    )


def map_labels(
    arr: np.ndarray, label_map: dict[int, int] | None, *, case: str | None, path: Path | None
) -> np.ndarray:
    """Apply ``label_map`` (ids not in it become 0) and return uint8; unmapped ids must fit uint8."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError("label map holds non-integer values", path=path, case=case)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"label map has pixel type {arr.dtype}", path=path, case=case)
    if arr.size and arr.min() < 0:
        raise InputError("label map holds negative ids", path=path, case=case)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.int64)
    if label_map is not None:
        arr = apply_label_map(arr, label_map)
    if arr.size and arr.max() > 255:
        raise InputError(
            f"label id {int(arr.max())} does not fit uint8 (missing label_map?)",
            path=path,
            case=case,
        )
    return arr.astype(np.uint8)


def _load_centroids(path: Path, case: str, image: sitk.Image) -> list[dict]:
    """A case's annotated centroids in any supported format (ours, VerSe JSON in either release
    form, BioMedia .lml, Slicer markups), as world LPS mm checked against the CT's extent."""
    from ctseg.formats.centroid_io import read_centroids

    rows = read_centroids(path, image, case=case)
    return [{k: r[k] for k in ("label", "name", "x", "y", "z")} for r in rows]


def to_int16(ct: sitk.Image) -> sitk.Image:
    """The CT as int16 HU (rounded, clipped), converted slab by slab: no whole float copy."""
    if ct.GetPixelID() == sitk.sitkInt16:
        return ct
    arr = sitk.GetArrayViewFromImage(ct)
    out = np.empty(arr.shape, np.int16)
    step = max(1, (1 << 24) // max(1, arr[0].size))
    for z in range(0, arr.shape[0], step):
        out[z : z + step] = np.clip(np.round(arr[z : z + step]), -32768, 32767)
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(ct)
    return img


def build_volume(
    raw_dir: Path,
    ct_out: Path,
    labels_out: Path,
    centroids_out: Path,
    *,
    case: str,
    label_map: dict[int, int] | None,
    ingest: dict,
    series_uid: str | None = None,
) -> None:
    """Convert a raw case folder (see :func:`find_raw_source`) with :func:`convert_volume`."""
    raw_dir = Path(raw_dir)
    cen_path = raw_dir / "centroids.json"
    convert_volume(
        find_raw_source(raw_dir, case=case),
        find_raw_labels(raw_dir),
        cen_path if cen_path.is_file() else None,
        ct_out,
        labels_out,
        centroids_out,
        case=case,
        label_map=label_map,
        ingest=ingest,
        series_uid=series_uid,
    )


def convert_volume(
    src: Path,
    lab_path: Path | None,
    cen_path: Path | None,
    ct_out: Path,
    labels_out: Path,
    centroids_out: Path,
    *,
    case: str,
    label_map: dict[int, int] | None,
    ingest: dict,
    series_uid: str | None = None,
) -> None:
    """Convert a scan to ``ct.nii.gz`` (int16 HU), ``labels.nii.gz`` (uint8) and centroids.

    ``src`` is a DICOM folder / NIfTI / NRRD, ``lab_path`` an optional label map, ``cen_path``
    optional given centroids (else computed from the labels). Errors name these very paths
    (the user's files, never a copy). Everything is read and checked before the first output
    is written, and the three outputs are renamed into place together, so a failure leaves
    none of them behind.
    """
    ingest = ingest or {}
    ct, _meta = read_image(Path(src), case=case, series_uid=series_uid, ingest=ingest)
    ct16 = to_int16(ct)
    del ct

    if lab_path is not None:
        lab = read_image_file(lab_path, case, ingest=ingest)
        lab = labels_on_grid(
            lab, ct16, case=case, path=lab_path, resample=bool(ingest.get("resample_labels", False))
        )
        lab_arr = map_labels(sitk.GetArrayViewFromImage(lab), label_map, case=case, path=lab_path)
    else:
        lab_arr = np.zeros(sitk.GetArrayViewFromImage(ct16).shape, np.uint8)
    lab_img = sitk.GetImageFromArray(lab_arr)
    lab_img.CopyInformation(ct16)

    centroids = (
        _load_centroids(cen_path, case, ct16)
        if cen_path is not None
        else centroids_from_labels(lab_img)
    )
    cen_text = dumps(centroids, indent=1, what=centroids_out) + "\n"

    with atomic_paths(ct_out, labels_out, centroids_out) as (t_ct, t_lab, t_cen):
        sitk.WriteImage(ct16, str(t_ct), True)
        sitk.WriteImage(lab_img, str(t_lab), True)
        t_cen.write_text(cen_text)


def read_case_list(path: Path) -> list[dict]:
    """Case-sheet rows from a seed-001 style list file (``image,label`` per line).

    Case id = the image file name without its extension(s); source = nrrd or nifti by
    extension; split = train. Relative paths are taken relative to the list file's folder.
    Blank lines and lines starting with ``#`` are skipped.
    """
    path = Path(path)
    rows: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not all(parts):
            raise InputError(f"line {lineno}: expected 'image,label', got {line!r}", path=path)
        image, label = (Path(p) if Path(p).is_absolute() else path.parent / p for p in parts)
        name = image.name
        kind = source_kind(image)
        if kind not in {"nrrd", "nifti"}:
            raise InputError(f"line {lineno}: image {name!r} is neither NRRD nor NIfTI", path=path)
        stem = strip_image_suffix(name)
        if stem in seen:
            raise InputError(
                f"line {lineno}: case id {stem!r} repeats line {seen[stem]}", path=path
            )
        seen[stem] = lineno
        rows.append(
            {
                "case": stem,
                "source": kind,
                "location": str(image),
                "sha256": "",
                "labels": str(label),
                "centroids": "",
                "label_map": "",
                "split": "train",
            }
        )
    if not rows:
        raise InputError("case list holds no cases", path=path)
    return rows
