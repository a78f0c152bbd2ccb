"""Localisation and identification scores of predicted centroids (VerSe / Glocker et al.).

A true level is *identified* when the predicted point carrying its label lies within 20 mm of
its true centroid AND that true centroid is the closest true centroid to the point; a level
the model did not output is not identified; a predicted level absent from the truth is a
false positive, counted apart. The mean localisation error is over levels present in both.
The counting itself is :func:`ctseg.evaluation.centroids.match_centroids` (one definition
project-wide, shared with the centroids derived from segmentations); this module adapts the
``{"label", "world"}`` points of the localiser and builds seed 004's per-vertebra table.
"""

from __future__ import annotations

import math

import pandas as pd

from ctseg.evaluation.centroids import identification_summary, match_centroids
from ctseg.localisation.geometry import read_centroids

TABLE_COLUMNS = (
    "level",
    "label",
    "true_x",
    "true_y",
    "true_z",
    "pred_x",
    "pred_y",
    "pred_z",
    "error_mm",
    "identified",
    "status",
)


def _xyz_points(points) -> list[dict]:
    return [
        {"label": c["label"], "x": c["world"][0], "y": c["world"][1], "z": c["world"][2]}
        for c in read_centroids(points)
    ]


def identification_table(pred, truth, max_dist_mm: float = 20.0) -> pd.DataFrame:
    """Seed 004's per-vertebra table: one row per true level (``status`` found / missing),
    then one per predicted level not in the truth (``status`` extra = false positive).

    ``pred`` / ``truth``: lists of ``{"label", "world": [x, y, z]}`` (or ``x, y, z`` keys), or
    centroids.json paths. Columns :data:`TABLE_COLUMNS`; NaN where a side is absent.
    """
    rows = match_centroids(_xyz_points(truth), _xyz_points(pred), max_dist_mm)
    df = pd.DataFrame(rows).rename(columns={"vertebra": "level"})
    if df.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    return df[list(TABLE_COLUMNS)].reset_index(drop=True)


def identification_scores(table: pd.DataFrame) -> dict:
    """Summary of a table (one case or several concatenated): ``mean_error_mm`` (matched
    levels), ``id_rate`` (identified / true levels), ``n_identified``, ``n_true``,
    ``n_missing``, ``false_positives`` (predicted levels not in the truth), ``n_matched``."""
    s = identification_summary(table.to_dict("records"))
    return {
        "mean_error_mm": s["mean_error_mm"],
        "median_error_mm": s["median_error_mm"],
        "id_rate": s["id_rate"],
        "n_identified": s["n_identified"],
        "n_true": s["n_true"],
        "n_matched": s["n_matched"],
        "n_missing": s["n_missing"],
        "false_positives": s["n_extra"],
    }


def format_table(table: pd.DataFrame) -> str:
    """The table as seed 004's ``measure.py`` printed it: level, predicted, true, error."""
    lines = []
    for r in table.itertuples(index=False):
        t = "-" if math.isnan(r.true_x) else f"[{r.true_x:.1f}, {r.true_y:.1f}, {r.true_z:.1f}]"
        p = "-" if math.isnan(r.pred_x) else f"[{r.pred_x:.1f}, {r.pred_y:.1f}, {r.pred_z:.1f}]"
        e = "" if math.isnan(r.error_mm) else f"{r.error_mm:.2f} mm"
        mark = "identified" if r.identified else r.status
        lines.append(f"{r.level:>6} pred {p:<24} true {t:<24} {e:>10} {mark}")
    return "\n".join(lines)
