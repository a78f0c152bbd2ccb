"""Evaluation of one experiment: per-label metrics, centroid identification, per-case summary.

Outputs (all written atomically, streamed one case at a time so that a cohort never has to fit
in memory; only a few scalars per label are kept for the final ``ALL`` row):

- ``metrics.tsv``: ``case, [view,] label, name`` + :data:`ctseg.evaluation.metrics.METRIC_KEYS`, one row
  per label present in the prediction or the truth (see ctseg.evaluation.metrics for the empty policy).
  For the ``bone_drr`` task the NIfTI is a stack of 2D views along z (spacing [px, px, 1]);
  metrics are computed per view on the 2D slice with 2D spacing and the ``view`` column holds
  the z index (the view's order in config).
- ``centroids.tsv``: ``case`` + :data:`ctseg.evaluation.centroids.MATCH_KEYS`. Only the ``vertebrae``
  task has vertebra centroids; for other tasks the file is a header-only table with the same
  columns, so downstream readers never need to special-case the task.
- ``summary.tsv``: one row per case and a final ``ALL`` row. Mean/sd of Dice, Jaccard, ASD,
  ASSD and HD95 over the labels (and views) of the case, pooled over all label rows of all cases
  for ``ALL``; means are NaN-aware and come with their counts (``n_dice``, ``n_surface``: rows
  where the value is defined; ``n_labels`` counts metric rows, i.e. label x view for
  ``bone_drr``). Centroid mean/median error, identification rate and counts
  (vertebrae task; NaN otherwise); ``ALL`` pools the vertebrae of all cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ctseg.core.errors import InputError
from ctseg.core.grid import check_same_grid
from ctseg.core.imageio import read_image_file
from ctseg.core.tasks import get_task
from ctseg.core.tsvio import tsv_rows
from ctseg.evaluation.centroids import (
    MATCH_KEYS,
    centroids_from_labels,
    identification_summary,
    label_name,
    match_centroids,
)
from ctseg.evaluation.metrics import (
    METRIC_KEYS,
    array_spacing,
    format_value,
    label_metrics,
)

NAN = float("nan")

#: metrics summarised per case: summary column prefix -> metrics.tsv column
SUMMARY_METRICS: dict[str, str] = {
    "dice": "dice",
    "jaccard": "jaccard",
    "asd": "asd_mm",
    "assd": "assd_mm",
    "hd95": "hd95_mm",
}

SUMMARY_COLUMNS: tuple[str, ...] = (
    "case",
    "n_labels",
    *(f"{p}_{s}" for p in SUMMARY_METRICS for s in ("mean", "sd")),
    "n_dice",
    "n_surface",
    "centroid_error_mean_mm",
    "centroid_error_median_mm",
    "n_centroids",
    "id_rate",
    "n_true_vertebrae",
    "n_identified",
    "n_missing",
    "n_extra",
)


def task_label_name(task: str, label: int) -> str:
    """Human name of a label for a task (VerSe names for vertebrae)."""
    if task == "vertebrae":
        return label_name(label)
    if label == 1:
        return {"metal": "metal", "bone_drr": "bone"}.get(task, "1")
    return str(label)


def nan_stats(values: Sequence[float]) -> tuple[float, float, int]:
    """NaN-aware (mean, sample sd, count); sd is NaN with fewer than two values."""
    v = np.asarray([x for x in values if not math.isnan(float(x))], dtype=np.float64)
    if v.size == 0:
        return NAN, NAN, 0
    sd = float(np.std(v, ddof=1)) if v.size > 1 else NAN
    return float(np.mean(v)), sd, int(v.size)


def _summary_row(case: str, metric_rows: list[dict], cent_rows: list[dict] | None) -> dict:
    row: dict = {"case": case, "n_labels": len(metric_rows)}
    for prefix, col in SUMMARY_METRICS.items():
        m, s, n = nan_stats([float(r[col]) for r in metric_rows])
        row[f"{prefix}_mean"], row[f"{prefix}_sd"] = m, s
        if prefix == "dice":
            row["n_dice"] = n
        if prefix == "assd":
            row["n_surface"] = n
    if cent_rows is None:
        row.update(
            centroid_error_mean_mm=NAN,
            centroid_error_median_mm=NAN,
            n_centroids=0,
            id_rate=NAN,
            n_true_vertebrae=0,
            n_identified=0,
            n_missing=0,
            n_extra=0,
        )
    else:
        s = identification_summary(cent_rows)
        row.update(
            centroid_error_mean_mm=s["mean_error_mm"],
            centroid_error_median_mm=s["median_error_mm"],
            n_centroids=s["n_matched"],
            id_rate=s["id_rate"],
            n_true_vertebrae=s["n_true"],
            n_identified=s["n_identified"],
            n_missing=s["n_missing"],
            n_extra=s["n_extra"],
        )
    return row


def _read_label_array(img: sitk.Image, path: Path, case: str) -> np.ndarray:
    arr = sitk.GetArrayFromImage(img)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise InputError("label map has non-integer values", path=path, case=case)
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise InputError("label map has negative values", path=path, case=case)
    return arr


def _read_centroid_list(path: Path, case: str) -> list[dict]:
    """A centroids.json (ours: label, x, y, z in world mm) as match_centroids reads it."""
    import json

    try:
        rows = json.loads(Path(path).read_text())
        return [
            {"label": int(r["label"]), "x": float(r["x"]), "y": float(r["y"]), "z": float(r["z"])}
            for r in rows
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a centroids.json ({exc})", path=path, case=case) from exc


def evaluate_case(
    case: str, pred_path: Path, truth_path: Path, *, task: str
) -> tuple[list[dict], list[dict] | None]:
    """Metric rows and (vertebrae task) centroid rows of one case; grids must match.

    Task ``centroids``: the prediction and the truth are centroid files (no voxel metrics)."""
    if task == "centroids":
        cent_rows = match_centroids(
            _read_centroid_list(truth_path, case), _read_centroid_list(pred_path, case)
        )
        for r in cent_rows:
            r["case"] = case
        return [], cent_rows
    pred_img = read_image_file(pred_path, case=case)
    truth_img = read_image_file(truth_path, case=case)
    check_same_grid(pred_img, truth_img, pred_path, truth_path, case=case)
    pred = _read_label_array(pred_img, pred_path, case)
    truth = _read_label_array(truth_img, truth_path, case)
    if not get_task(task).vertebrae:
        # Binary tasks score one foreground class; DRR truth holds the projected vertebra ids,
        # and "bone" is any of them (the class the bone_drr model is trained on).
        pred, truth = (pred > 0).astype(np.uint8), (truth > 0).astype(np.uint8)
    spacing = array_spacing(truth_img)
    rows: list[dict] = []
    if task == "bone_drr":
        if pred.ndim != 3:
            raise InputError("bone_drr stack must be 3D (views along z)", path=pred_path, case=case)
        for view in range(pred.shape[0]):
            for r in label_metrics(pred[view], truth[view], spacing[1:]):
                rows.append({"case": case, "view": view, **r})
    else:
        for r in label_metrics(pred, truth, spacing):
            rows.append({"case": case, **r})
    for r in rows:
        r["name"] = task_label_name(task, r["label"])
    cent_rows = None
    if task == "vertebrae":
        cent_rows = match_centroids(
            centroids_from_labels(truth_img), centroids_from_labels(pred_img)
        )
        for r in cent_rows:
            r["case"] = case
    return rows, cent_rows


def evaluate_experiment(
    pairs: list[dict],
    out_metrics: Path,
    out_centroids: Path,
    out_summary: Path,
    *,
    task: str,
) -> None:
    """Evaluate every ``{"case", "pred", "truth"}`` pair and write the three TSVs.

    Cases are read and scored one at a time and their rows streamed to the (temporary) output
    files; the three files appear together only when every case succeeded.
    """
    get_task(task, where="evaluate")
    metric_cols = ["case", *(["view"] if task == "bone_drr" else []), "label", "name", *METRIC_KEYS]
    cent_cols = ["case", *MATCH_KEYS]
    pooled: list[dict] = []  # a few scalars per label, for the ALL row
    pooled_cent: list[dict] = []
    with ExitStack() as stack:
        put_m, put_c, put_s = (
            stack.enter_context(tsv_rows(path, cols, cell=format_value))
            for path, cols in (
                (out_metrics, metric_cols),
                (out_centroids, cent_cols),
                (out_summary, SUMMARY_COLUMNS),
            )
        )
        for pair in tqdm(pairs, desc="evaluate", unit="case"):
            case = str(pair["case"])
            rows, cent_rows = evaluate_case(
                case, Path(pair["pred"]), Path(pair["truth"]), task=task
            )
            for r in rows:
                put_m(r)
            for r in cent_rows or []:
                put_c(r)
            put_s(_summary_row(case, rows, cent_rows))
            pooled.extend({k: r[k] for k in SUMMARY_METRICS.values()} for r in rows)
            if cent_rows is not None:
                pooled_cent.extend(
                    {k: r[k] for k in ("status", "error_mm", "identified")} for r in cent_rows
                )
        all_row = _summary_row("ALL", pooled, pooled_cent if get_task(task).vertebrae else None)
        put_s(all_row)
