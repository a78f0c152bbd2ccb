"""The `dataset` rule's manifest: every file an experiment trains and validates on, one row each."""

from __future__ import annotations

import csv

import pytest

from ctseg.core.errors import InputError
from ctseg.training.manifest import COLUMNS, manifest_rows, write_manifest


def _files(tmp_path, *names, size=3):
    for name in names:
        (tmp_path / name).write_bytes(b"x" * size)
    return [str(tmp_path / n) for n in names]


def test_cube_and_validation_cases_are_listed_with_sizes(tmp_path):
    cube, ct, labels = _files(tmp_path, "c.h5", "v1_ct.nii.gz", "v1_labels.nii.gz")
    (tmp_path / "c.h5").write_bytes(b"y" * 11)
    rows = manifest_rows({"cube": cube}, {"cases": [{"case": "v1", "ct": ct, "labels": labels}]})
    assert [(r["split"], r["case"], r["item"], r["bytes"]) for r in rows] == [
        ("train", "", "cube", 11),
        ("val", "v1", "ct", 3),
        ("val", "v1", "labels", 3),
    ]


def test_case_items_with_file_lists_give_one_row_per_file(tmp_path):
    a, b, c = _files(tmp_path, "ap.nii.gz", "lat.nii.gz", "t1_ct.nii.gz")
    rows = manifest_rows({"cases": [{"case": "t1", "drr": [a, b], "ct": c}]}, {"cases": []})
    assert [(r["case"], r["item"], r["path"]) for r in rows] == [
        ("t1", "drr", a),
        ("t1", "drr", b),
        ("t1", "ct", c),
    ]


def test_written_manifest_reads_back(tmp_path):
    (ct,) = _files(tmp_path, "t1.nii.gz")
    out = tmp_path / "datasets" / "e.tsv"
    out.parent.mkdir()
    write_manifest({"cases": [{"case": "t1", "ct": ct}]}, {"cases": []}, out)
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh, delimiter="\t"))
    assert list(table[0]) == COLUMNS
    assert table == [{"split": "train", "case": "t1", "item": "ct", "path": ct, "bytes": "3"}]


def test_missing_file_names_case_and_file_and_writes_nothing(tmp_path):
    out = tmp_path / "e.tsv"
    gone = str(tmp_path / "t9_ct.nii.gz")
    with pytest.raises(InputError) as err:
        write_manifest({"cases": [{"case": "t9", "ct": gone}]}, {"cases": []}, out)
    assert "case 't9'" in str(err.value) and gone in str(err.value)
    assert not out.exists()
