"""Vertebra centroids of a label map, and localisation / identification scoring (seed 004).

Centroids are centres of mass in world coordinates (DICOM patient LPS, mm), computed by
:func:`ctseg.core.centroids.centroids_from_labels` (re-exported here).

Identification follows Glocker et al. 2012 (also used by VerSe): a vertebra is *identified*
when the predicted centroid carrying its label lies within ``max_dist_mm`` (20 mm) of its true
centroid AND its true centroid is the closest true centroid to that prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ctseg.core.centroids import centroids_from_labels
from ctseg.core.labels import label_name

__all__ = [
    "MATCH_KEYS",
    "centroids_from_labels",
    "identification_summary",
    "label_name",
    "match_centroids",
]

NAN = float("nan")

#: Columns of a centroid-matching row (see :func:`match_centroids`).
MATCH_KEYS: tuple[str, ...] = (
    "vertebra",
    "label",
    "true_x",
    "true_y",
    "true_z",
    "pred_x",
    "pred_y",
    "pred_z",
    "error_mm",
    "identified",
    "identified_as",
    "status",
)


def _xyz(c: dict) -> np.ndarray:
    return np.array([float(c["x"]), float(c["y"]), float(c["z"])])


def match_centroids(
    true: Sequence[dict], pred: Sequence[dict], max_dist_mm: float = 20.0
) -> list[dict]:
    """Match predicted centroids to true ones by label and score identification.

    One row per true vertebra (``status`` "found" when a prediction with its label exists, else
    "missing" with NaN predicted coordinates and error), then one row per predicted label with
    no true counterpart (``status`` "extra", NaN true coordinates). ``identified_as`` is the name
    of the true vertebra closest to the predicted centroid if that one is within
    ``max_dist_mm``, else "". Missing and extra vertebrae are counted, never dropped.
    """
    true_by = {int(c["label"]): c for c in true}
    pred_by = {int(c["label"]): c for c in pred}
    true_labels = sorted(true_by)
    true_pts = np.array([_xyz(true_by[k]) for k in true_labels]).reshape(-1, 3)

    def closest_true(p: np.ndarray) -> tuple[int | None, float]:
        if not true_labels:
            return None, NAN
        d = np.linalg.norm(true_pts - p, axis=1)
        i = int(np.argmin(d))
        return true_labels[i], float(d[i])

    rows = []
    for lab in true_labels:
        t = _xyz(true_by[lab])
        row = {
            "vertebra": label_name(lab),
            "label": lab,
            "true_x": t[0],
            "true_y": t[1],
            "true_z": t[2],
        }
        if lab in pred_by:
            p = _xyz(pred_by[lab])
            err = float(np.linalg.norm(p - t))
            near, near_d = closest_true(p)
            row.update(pred_x=p[0], pred_y=p[1], pred_z=p[2], error_mm=err)
            row["identified"] = bool(err <= max_dist_mm and near == lab)
            row["identified_as"] = label_name(near) if near_d <= max_dist_mm else ""
            row["status"] = "found"
        else:
            row.update(pred_x=NAN, pred_y=NAN, pred_z=NAN, error_mm=NAN)
            row.update(identified=False, identified_as="", status="missing")
        rows.append(row)
    for lab in sorted(set(pred_by) - set(true_by)):
        p = _xyz(pred_by[lab])
        near, near_d = closest_true(p)
        rows.append(
            {
                "vertebra": label_name(lab),
                "label": lab,
                "true_x": NAN,
                "true_y": NAN,
                "true_z": NAN,
                "pred_x": p[0],
                "pred_y": p[1],
                "pred_z": p[2],
                "error_mm": NAN,
                "identified": False,
                "identified_as": label_name(near)
                if near is not None and near_d <= max_dist_mm
                else "",
                "status": "extra",
            }
        )
    return rows


def _is_true(v: object) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in {"true", "1", "yes"}
    return bool(v)


def identification_summary(rows: Sequence[dict]) -> dict:
    """Per-scan localisation and identification numbers from :func:`match_centroids` rows.

    - ``mean_error_mm`` / ``median_error_mm``: over vertebrae present in both truth and
      prediction (NaN when there are none), ``n_matched`` of them;
    - ``id_rate``: identified / true vertebrae (VerSe's identification rate);
    - ``recall`` = identified / true vertebrae and ``precision`` = identified / predicted
      vertebrae (VerSe-style per-scan scores; NaN when the denominator is 0);
    - ``n_true``, ``n_pred``, ``n_identified``, ``n_missing``, ``n_extra``.
    """
    status = [r["status"] for r in rows]
    n_true = sum(s in ("found", "missing") for s in status)
    n_pred = sum(s in ("found", "extra") for s in status)
    n_missing = status.count("missing")
    n_extra = status.count("extra")
    errors = [
        float(r["error_mm"])
        for r in rows
        if r["status"] == "found" and not math.isnan(float(r["error_mm"]))
    ]
    n_id = sum(1 for r in rows if r["status"] == "found" and _is_true(r["identified"]))
    return {
        "mean_error_mm": float(np.mean(errors)) if errors else NAN,
        "median_error_mm": float(np.median(errors)) if errors else NAN,
        "n_matched": len(errors),
        "id_rate": n_id / n_true if n_true else NAN,
        "recall": n_id / n_true if n_true else NAN,
        "precision": n_id / n_pred if n_pred else NAN,
        "n_true": n_true,
        "n_pred": n_pred,
        "n_identified": n_id,
        "n_missing": n_missing,
        "n_extra": n_extra,
    }
