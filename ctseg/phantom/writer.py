"""Write one phantom case as raw data: ``dicom/``, labels, centroids and metal truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.atomic import atomic_dir
from ctseg.ingest.dicomwrite import write_dicom_series
from ctseg.phantom.generate import Phantom, generate
from ctseg.phantom.params import PhantomParams


def centroids_json(centroids: list[dict]) -> str:
    """DESIGN's centroids.json text: sorted by label, mm rounded to 1e-4."""
    rows = [
        {"label": int(r["label"]), "name": r["name"], **{a: round(float(r[a]), 4) for a in "xyz"}}
        for r in sorted(centroids, key=lambda r: r["label"])
    ]
    return json.dumps(rows, indent=2) + "\n"


def right_handed(ph: Phantom) -> tuple[dict[str, np.ndarray], tuple, tuple, tuple, bool]:
    """The arrays and geometry a DICOM reader will see for this phantom.

    A DICOM series' slice normal is row x column, so a left-handed stored grid (24 of the 48
    codes, e.g. ``LPI``) reads back with its slice axis reversed. The case is written that way
    (labels too, so they share the image's grid) and the files keep the requested slice order in
    their InstanceNumbers; the world image is the same either way.
    """
    m = np.asarray(ph.direction, dtype=np.float64).reshape(3, 3)
    arrays = {"hu": ph.hu, "labels": ph.labels, "metal": ph.metal}
    if np.linalg.det(m) > 0:
        return arrays, ph.spacing, ph.origin, ph.direction, False
    n = ph.hu.shape[0]
    origin = np.asarray(ph.origin) + (n - 1) * ph.spacing[2] * m[:, 2]
    m = m.copy()
    m[:, 2] *= -1
    flipped = {k: np.ascontiguousarray(v[::-1]) for k, v in arrays.items()}
    return flipped, ph.spacing, tuple(origin.tolist()), tuple(m.ravel().tolist()), True


def write_phantom_case(
    out_dir: Path, seed: int, params: PhantomParams | dict | None = None
) -> None:
    """Write one phantom case as raw data: ``dicom/``, labels, centroids and metal truth.

    The whole ``out_dir`` is written under a temporary name and renamed into place, so a killed
    run never leaves a case that looks complete.
    """
    ph = generate(seed, params)
    arrays, spacing, origin, direction, reversed_ = right_handed(ph)
    n = ph.hu.shape[0]

    def instance(k, ds):
        ds.InstanceNumber = n - k
        return ds

    with atomic_dir(Path(out_dir)) as tmp:
        write_dicom_series(
            arrays["hu"],
            spacing,
            origin,
            direction,
            tmp / "dicom",
            seed=seed,
            patient_id=f"PHANTOM{seed}",
            per_slice=instance if reversed_ else None,
        )
        for key, name in (("labels", "labels.nii.gz"), ("metal", "metal_truth.nii.gz")):
            img = sitk.GetImageFromArray(arrays[key])
            img.SetSpacing(spacing)
            img.SetOrigin(origin)
            img.SetDirection(direction)
            sitk.WriteImage(img, str(tmp / name), True)
        (tmp / "centroids.json").write_text(centroids_json(ph.centroids))
