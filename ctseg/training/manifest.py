"""The training set of one experiment as a file: the one input a `train` job reads.

A `train` job could list every case file it reads (two per training case for the centroid
localiser, the cube and every validation case for the others), but Snakemake then scans that
list once for every job that needs the model (a check that a job does not consume what it
produces), a cost quadratic in the cohort: 10,000 cases took longer to plan than to read. The
`dataset` rule lists the files instead, as this manifest; `train` depends on the manifest alone
and is rerun when it changes, which it does whenever one of the listed files is newer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctseg.core.errors import InputError
from ctseg.core.tsvio import write_tsv

COLUMNS = ["split", "case", "item", "path", "bytes"]


def manifest_rows(train: Mapping[str, Any], val: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per file: a cube (split train, no case) or a case's file (ct, labels, ...)."""
    rows: list[dict[str, Any]] = []
    if "cube" in train:
        rows.append({"split": "train", "case": "", "item": "cube", "path": train["cube"]})
    for split, data in (("train", train), ("val", val)):
        for entry in data.get("cases", []):
            for key, value in entry.items():
                if key == "case":
                    continue
                for path in value if isinstance(value, list) else [value]:
                    rows.append({"split": split, "case": entry["case"], "item": key, "path": path})
    for row in rows:
        path = Path(row["path"])
        if not path.is_file():
            raise InputError("missing", path=path, case=row["case"] or None)
        row["bytes"] = path.stat().st_size
    return rows


def write_manifest(
    train: Mapping[str, Any], val: Mapping[str, Any], out: str | os.PathLike
) -> Sequence[dict[str, Any]]:
    """Write the manifest TSV atomically; returns its rows."""
    rows = manifest_rows(train, val)
    write_tsv(out, COLUMNS, rows)
    return rows
