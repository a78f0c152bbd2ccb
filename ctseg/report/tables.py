"""The run's ``summary.md``: tables reproducing each seed's results from this run's TSVs.

Every number in ``summary.md`` is read from this run's TSVs (``stats/summary.tsv``,
``metal/summary.tsv`` and each experiment's ``eval/{experiment}/{summary,metrics,centroids}.tsv``
written by :mod:`ctseg.evaluation.evaluate`); nothing is typed in by hand. Numbers are printed with 4
decimals (counts as integers) and undefined values (NaN, missing file or column) as ``n/a``.

Tables, by seed project:

- 002: DICOM summary statistics (max / mean HU, centre of the volume in scanner coordinates, ...)
  and metal statistics (metal voxels / volume) - the columns of the two summary TSVs;
- 000: Dice by DRR pre-processing (mean ± sd) over ``bone_drr`` experiments;
- 001: UNet2D vs UNet3D over ``vertebrae`` experiments;
- 003: Dice / Jaccard / ASD / ASSD / HD95 per experiment;
- 004: per-vertebra centroid error and identification, with the mean error and identification
  rate of each ``vertebrae`` experiment;
- and a per-experiment overview with all of the above.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ctseg.core.atomic import write_text
from ctseg.core.errors import InputError

NA = "n/a"


# --------------------------------------------------------------------------------------------
# formatting and reading
# --------------------------------------------------------------------------------------------


def fmt(value: object, digits: int = 4) -> str:
    """A table cell: floats with ``digits`` decimals, integers as such, NaN/None as ``n/a``."""
    if value is None:
        return NA
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        f = float(value)
        if math.isnan(f):
            return NA
        if f.is_integer() and abs(f) < 1e15 and digits == 0:
            return str(int(f))
        return f"{f:.{digits}f}"
    text = str(value)
    return text if text.strip() else NA


def fmt_pm(mean: object, sd: object, digits: int = 4) -> str:
    """``mean ± sd`` (``n/a`` parts where undefined)."""
    m = fmt(mean, digits)
    if m == NA:
        return NA
    return f"{m} ± {fmt(sd, digits)}"


def read_tsv(path: str | Path | None) -> pd.DataFrame | None:
    """A TSV as a DataFrame; None when there is no such file, empty when it has no rows."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, sep="\t")
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot parse TSV: {exc}", path=path) from exc


def _all_row(summary: pd.DataFrame | None) -> dict:
    if summary is None or summary.empty or "case" not in summary.columns:
        return {}
    rows = summary[summary["case"].astype(str) == "ALL"]
    return rows.iloc[-1].to_dict() if len(rows) else {}


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _column_formatter(series: pd.Series):
    """Integers stay integers (counts, voxels); other numeric columns get 4 decimals."""
    num = pd.to_numeric(series, errors="coerce")
    if series.dtype.kind in "biuf" and num.notna().any():
        vals = num.dropna().to_numpy()
        if np.all(np.mod(vals, 1) == 0) and np.all(np.abs(vals) < 1e15):
            return lambda v: NA if pd.isna(v) else str(int(v))
        return lambda v: fmt(float(v))
    return lambda v: NA if pd.isna(v) else fmt(v)


#: Columns of the DICOM summary / metal tables that seed 002 reported (matched by pattern).
_SEED002_PATTERNS = (
    r"^case$",
    r"max",
    r"mean",
    r"cent(er|re)",
    r"metal",
    r"voxel",
    r"volume",
    r"n_",
)


def _tsv_table(df: pd.DataFrame | None, what: str) -> str:
    if df is None:
        return f"_{what}: not available in this run._"
    if df.empty:
        return f"_{what}: no rows._"
    cols = [c for c in df.columns if any(re.search(p, str(c)) for p in _SEED002_PATTERNS)]
    if len(cols) <= 1:
        cols = list(df.columns)
    fmts = {c: _column_formatter(df[c]) for c in cols}
    return _md_table(cols, [[fmts[c](r[c]) for c in cols] for _, r in df.iterrows()])


# --------------------------------------------------------------------------------------------
# summary.md
# --------------------------------------------------------------------------------------------


def _per_vertebra(centroids: pd.DataFrame | None) -> list[list[str]]:
    if centroids is None or centroids.empty:
        return []
    truth_rows = centroids[centroids["status"].isin(["found", "missing"])]
    out = []
    for (_label, vert), g in truth_rows.groupby(["label", "vertebra"], sort=True):
        err = pd.to_numeric(g["error_mm"], errors="coerce")
        ident = g["identified"].astype(str).str.lower().isin(["true", "1"])
        out.append(
            [
                str(vert),
                str(len(g)),
                fmt(float(err.mean()) if err.notna().any() else float("nan")),
                fmt(float(err.max()) if err.notna().any() else float("nan")),
                fmt(float(ident.mean())),
                str(int((g["status"] == "missing").sum())),
            ]
        )
    n_extra = int((centroids["status"] == "extra").sum())
    if n_extra:
        out.append(["extra (no true vertebra)", str(n_extra), NA, NA, NA, "0"])
    return out


def family_rows(
    per_case: Mapping[str, pd.DataFrame | None], families: Mapping[str, str]
) -> list[list[str]]:
    """Rows (family, experiment, cases, Dice, centroid error, identification) of the
    per-case summaries, grouped by the family each test case belongs to."""
    rows = []
    for fam in sorted({f or "in-distribution" for f in families.values()}):
        members = {c for c, f in families.items() if (f or "in-distribution") == fam}
        for name, df in per_case.items():
            if df is None or df.empty:
                continue
            sub = df[df["case"].astype(str).isin(members)]
            if sub.empty:
                continue
            dice = pd.to_numeric(sub["dice_mean"], errors="coerce")
            n_c = pd.to_numeric(sub["n_centroids"], errors="coerce").fillna(0)
            err = pd.to_numeric(sub["centroid_error_mean_mm"], errors="coerce")
            n_true = pd.to_numeric(sub["n_true_vertebrae"], errors="coerce").fillna(0).sum()
            n_id = pd.to_numeric(sub["n_identified"], errors="coerce").fillna(0).sum()
            pooled = float((err.fillna(0) * n_c).sum() / n_c.sum()) if n_c.sum() else float("nan")
            rate = f"{n_id / n_true:.3f} ({int(n_id)} of {int(n_true)})" if n_true else NA
            rows.append(
                [fam, name, str(len(sub)), fmt(float(dice.mean()), 3), fmt(pooled, 3), rate]
            )
    return rows


def write_summary_md(
    out_md: Path,
    *,
    stats_tsv: str | Path | None,
    metal_tsv: str | Path | None,
    experiments: Mapping[str, Mapping],
    excluded: Mapping[str, str] | None = None,
    families: Mapping[str, str] | None = None,
) -> None:
    """Write ``summary.md`` with every seed's table from this run's TSVs (atomically).

    ``excluded`` (config ``exclude_cases``, ``{case: reason}``) lists the cases that every table
    leaves out, so that a cohort with failed cases is never mistaken for a complete one.

    ``experiments`` maps a name to ``{"config": dict, "summary": path, "metrics": path,
    "centroids": path}``; ``config`` supplies task, model and preprocess.
    """
    parts = ["# ctseg run summary", ""]
    parts += [
        "Every number below is read from this run's result tables; `n/a` marks values that are "
        "undefined (e.g. surface distances when a structure is empty) or not produced.",
        "",
    ]
    parts += [
        "## DICOM summary statistics (seed 002)",
        "",
        _tsv_table(read_tsv(stats_tsv), "DICOM summary"),
        "",
    ]
    parts += [
        "## Metal statistics (seed 002)",
        "",
        _tsv_table(read_tsv(metal_tsv), "metal statistics"),
        "",
    ]

    loaded = {}
    for name, exp in experiments.items():
        cfg = dict(exp.get("config") or {})
        loaded[name] = {
            "cfg": cfg,
            "cases": read_tsv(exp.get("summary")),
            "all": _all_row(read_tsv(exp.get("summary"))),
            "centroids": read_tsv(exp.get("centroids")),
        }

    def by_task(task: str) -> list[str]:
        return [n for n, e in loaded.items() if e["cfg"].get("task") == task]

    # seed 000
    rows = []
    for n in by_task("bone_drr"):
        a = loaded[n]["all"]
        rows.append(
            [
                n,
                str(loaded[n]["cfg"].get("preprocess", "none")),
                fmt_pm(a.get("dice_mean"), a.get("dice_sd")),
                fmt(a.get("n_dice")),
            ]
        )
    parts += ["## Dice by DRR pre-processing, bone segmentation (seed 000)", ""]
    parts += [
        _md_table(["experiment", "pre-processing", "Dice (mean ± sd)", "n"], rows)
        if rows
        else "_no bone_drr experiments in this run._",
        "",
    ]

    # seed 001
    rows = []
    for n in by_task("vertebrae"):
        a = loaded[n]["all"]
        rows.append(
            [
                n,
                str(loaded[n]["cfg"].get("model", NA)),
                fmt_pm(a.get("dice_mean"), a.get("dice_sd")),
                fmt_pm(a.get("jaccard_mean"), a.get("jaccard_sd")),
                fmt(a.get("n_dice")),
            ]
        )
    parts += ["## UNet2D vs UNet3D, vertebra segmentation (seed 001)", ""]
    parts += [
        _md_table(["experiment", "model", "Dice (mean ± sd)", "Jaccard (mean ± sd)", "n"], rows)
        if rows
        else "_no vertebrae experiments in this run._",
        "",
    ]

    # seed 003
    rows = []
    for n, e in loaded.items():
        a = e["all"]
        rows.append(
            [
                n,
                str(e["cfg"].get("task", NA)),
                str(e["cfg"].get("model", NA)),
                fmt(a.get("dice_mean")),
                fmt(a.get("jaccard_mean")),
                fmt(a.get("asd_mean")),
                fmt(a.get("assd_mean")),
                fmt(a.get("hd95_mean")),
            ]
        )
    parts += ["## Dice / Jaccard / ASD / HD95 per experiment (seed 003)", ""]
    parts += [
        _md_table(
            [
                "experiment",
                "task",
                "model",
                "Dice",
                "Jaccard",
                "ASD (mm)",
                "ASSD (mm)",
                "HD95 (mm)",
            ],
            rows,
        )
        if rows
        else "_no experiments in this run._",
        "",
    ]

    # seed 004
    parts += ["## Vertebra centroids: localisation and identification (seed 004)", ""]
    parts += [
        "Centroids from the segmentation experiments (centre of mass of each predicted level) "
        "side by side with the centroid-only experiments (task `centroids`, trained from "
        "centroid files alone). Seed 004's published run on the BioMedia CT data: mean "
        "localisation error 7.76 mm, 9 of 12 vertebrae identified.",
        "",
    ]
    vert = by_task("vertebrae") + by_task("centroids")
    if not vert:
        parts += ["_no vertebrae experiments in this run._", ""]
    for n in vert:
        a = loaded[n]["all"]
        parts += [
            f"### {n}",
            "",
            f"Mean centroid error: {fmt(a.get('centroid_error_mean_mm'))} mm "
            f"(median {fmt(a.get('centroid_error_median_mm'))} mm, n = {fmt(a.get('n_centroids'))}); "
            f"identification rate: {fmt(a.get('id_rate'))} "
            f"({fmt(a.get('n_identified'))} of {fmt(a.get('n_true_vertebrae'))}); "
            f"missing: {fmt(a.get('n_missing'))}; extra: {fmt(a.get('n_extra'))}.",
            "",
        ]
        pv = _per_vertebra(loaded[n]["centroids"])
        parts += [
            _md_table(
                [
                    "vertebra",
                    "n",
                    "mean error (mm)",
                    "max error (mm)",
                    "identification rate",
                    "missing",
                ],
                pv,
            )
            if pv
            else "_no centroid rows._",
            "",
        ]

    # the robustness suite: the test cases' named families of variation
    if families and any(families.values()):
        parts += ["## Vertebra models by family of variation (robustness suite)", ""]
        parts += [
            "Per family and model: mean over the family's cases of the per-case mean Dice, the "
            "centroid error pooled over matched vertebrae, and the identification rate "
            "(identified / true vertebrae; VerSe's 20 mm rule).",
            "",
        ]
        rows = family_rows(
            {n: loaded[n]["cases"] for n in by_task("vertebrae") + by_task("centroids")}, families
        )
        parts += [
            _md_table(
                ["family", "experiment", "cases", "Dice", "centroid error (mm)", "identification"],
                rows,
            )
            if rows
            else "_no vertebra results per case._",
            "",
        ]

    # overview
    rows = []
    for n, e in loaded.items():
        a = e["all"]
        rows.append(
            [
                n,
                fmt_pm(a.get("dice_mean"), a.get("dice_sd")),
                fmt_pm(a.get("jaccard_mean"), a.get("jaccard_sd")),
                fmt_pm(a.get("asd_mean"), a.get("asd_sd")),
                fmt_pm(a.get("hd95_mean"), a.get("hd95_sd")),
                fmt(a.get("centroid_error_mean_mm")),
                fmt(a.get("id_rate")),
            ]
        )
    parts += ["## Per experiment", ""]
    parts += [
        _md_table(
            [
                "experiment",
                "Dice",
                "Jaccard",
                "ASD (mm)",
                "HD95 (mm)",
                "centroid error (mm)",
                "identification rate",
            ],
            rows,
        )
        if rows
        else "_no experiments in this run._",
        "",
    ]
    if excluded:
        parts += ["## Cases left out (config exclude_cases)", ""]
        parts += [_md_table(["case", "reason"], [[c, r] for c, r in sorted(excluded.items())]), ""]
    write_text(out_md, "\n".join(parts))
