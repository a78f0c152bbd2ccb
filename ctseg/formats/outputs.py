"""Every standard output of one segmented case, written in one call.

The ``segment`` command and the workflow both deliver the same set per case, so they call
:func:`write_case_outputs` with the label image on the source grid (VerSe ids) and the CT, and
get back a map of what was written:

- ``labels``: ``labels.nii.gz`` (exact source geometry);
- ``seg_nrrd``: ``labels.seg.nrrd`` (3D Slicer segmentation, named and coloured segments);
- ``dicom_seg``: ``labels.seg.dcm`` when the source DICOM files are given;
- ``centroids`` / ``centroids_verse`` / ``centroids_markups``: ``centroids.json``,
  ``centroids_ctd.json`` (VerSe subject-based), ``centroids.mrk.json`` (Slicer markups);
- ``statistics`` / ``statistics_tsv``: ``statistics.json`` and ``statistics.tsv``;
- ``qc`` / ``qc_png``: ``qc.json`` (flags and verdict) and ``qc.png``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.atomic import atomic_path, write_text
from ctseg.formats.centroid_io import write_centroid_outputs
from ctseg.formats.qc import quality_flags
from ctseg.formats.slicer_seg import write_slicer_seg
from ctseg.formats.vertebra_stats import vertebra_statistics, write_statistics
from ctseg.report.qc_png import write_qc_png


def write_case_outputs(
    labels: sitk.Image,
    ct: sitk.Image,
    out_dir: str | Path,
    *,
    source_dicom_files: Sequence[str | Path] | None = None,
    probabilities: np.ndarray | None = None,
    raw_argmax: np.ndarray | sitk.Image | None = None,
    trained_ids: Iterable[int] | None = None,
    metal: sitk.Image | None = None,
    qc_thresholds: dict | None = None,
    confidence_measures: dict | None = None,
    relabelled_fraction: float | None = None,
    localiser: tuple | None = None,
    title: str = "",
    png: bool = True,
) -> dict[str, Path]:
    """Write the standard outputs of one case into ``out_dir``; returns {kind: path}.

    ``labels`` must be on the CT's grid. The DICOM-SEG is written last; when the source series
    cannot be referenced its InputError propagates with every other output already written. Optional evidence feeds the QC: ``probabilities``
    ``[C, z, y, x]``, ``raw_argmax`` (labels before the along-spine relabelling) and the
    model's ``trained_ids`` (or, computed on the working grid, ``confidence_measures`` and
    ``relabelled_fraction``, see :func:`~ctseg.formats.qc.quality_flags`); ``metal`` adds per-level implant volumes to the statistics; ``localiser`` (a loaded
    centroid localiser with a region network) adds the ``anatomy`` check of the naming.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (
        labels.GetSize() != ct.GetSize()
        or not np.allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-4)
        or not np.allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-6)
    ):
        raise ValueError("labels are not on the CT's grid")
    paths: dict[str, Path] = {}
    with atomic_path(out / "labels.nii.gz") as tmp:
        sitk.WriteImage(labels, str(tmp), True)
    paths["labels"] = out / "labels.nii.gz"
    paths["seg_nrrd"] = write_slicer_seg(labels, out / "labels.seg.nrrd")
    stats = vertebra_statistics(labels, ct, metal=metal)
    # the statistics' centroids are the centres of mass of each level (one pass, in spine order)
    centroids = [{"label": r["label"], "world": r["centroid"]} for r in stats["levels"]]
    written = write_centroid_outputs(centroids, labels, out)
    paths.update(
        centroids=written["ours"],
        centroids_verse=written["verse"],
        centroids_markups=written["markups"],
    )
    write_statistics(stats, out / "statistics.json", out / "statistics.tsv")
    paths.update(statistics=out / "statistics.json", statistics_tsv=out / "statistics.tsv")
    anatomy = None
    if localiser is not None:
        from ctseg.localisation.regions import anatomy_rows

        pts = [{"label": r["label"], "world": r["centroid"]} for r in stats["levels"]]
        anatomy = anatomy_rows(localiser, ct, pts)
    qc = quality_flags(
        labels,
        ct,
        probabilities,
        raw_argmax=raw_argmax,
        trained_ids=trained_ids,
        thresholds=qc_thresholds,
        stats=stats,
        confidence_measures=confidence_measures,
        relabelled_fraction=relabelled_fraction,
        anatomy=anatomy,
    )
    write_text(out / "qc.json", json.dumps(qc, indent=1) + "\n")
    paths["qc"] = out / "qc.json"
    if png:
        paths["qc_png"] = write_qc_png(labels, ct, out / "qc.png", qc=qc, title=title, stats=stats)
    if source_dicom_files:
        # Last: a source series that cannot be referenced (anonymised UIDs) raises InputError
        # after every other output is in place; the caller reports it and goes on.
        from ctseg.formats.dicom_seg import write_dicom_seg

        paths["dicom_seg"] = write_dicom_seg(labels, source_dicom_files, out / "labels.seg.dcm")
    return paths


def write_case_outputs_from_files(
    prediction: Path,
    ct_path: Path,
    out_dir: Path,
    *,
    dicom_dir: Path | None = None,
    trained_ids: Iterable[int] | None = None,
    case: str | None = None,
    localiser: Path | None = None,
) -> dict[str, Path]:
    """The workflow's form of :func:`write_case_outputs`: read a prediction and its CT, write
    every output into a temporary folder that replaces ``out_dir`` only when complete.
    ``localiser``: the centroid localiser's model.pt (the QC's ``anatomy`` check).

    A DICOM-SEG that cannot reference its source series (e.g. anonymised UIDs) is reported in
    the log and in ``qc.json``'s notes instead of failing the case: every other output stands.
    """
    from ctseg.core.atomic import atomic_dir
    from ctseg.core.errors import InputError
    from ctseg.core.imageio import read_image_file

    labels = read_image_file(prediction, case)
    ct = read_image_file(ct_path, case)
    files = sorted(p for p in Path(dicom_dir).rglob("*") if p.is_file()) if dicom_dir else None
    loc = None
    if localiser is not None:
        from ctseg.localisation.predict import load_localiser

        loc = load_localiser(localiser, "cpu")
    kw = {"trained_ids": trained_ids, "title": case or "", "localiser": loc}
    with atomic_dir(Path(out_dir)) as tmp:
        try:
            paths = write_case_outputs(labels, ct, tmp, source_dicom_files=files, **kw)
        except InputError as exc:
            if not files:
                raise
            print(f"DICOM-SEG not written: {exc}")
            paths = write_case_outputs(labels, ct, tmp, **kw)
            qc = json.loads((tmp / "qc.json").read_text())
            qc.setdefault("notes", []).append(f"DICOM-SEG not written: {exc}")
            write_text(tmp / "qc.json", json.dumps(qc, indent=1) + "\n")
    return {k: Path(out_dir) / Path(v).name for k, v in paths.items()}
