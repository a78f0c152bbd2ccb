"""The bad-input matrix: every CLI verb, fed bad input, exits non-zero with one line on stderr
naming the offending file, and never a traceback.

The CLI runs in-process (``ctseg.cli.main``) to stay fast; an exception escaping ``main`` is a
traceback a user would see, so it fails the test as such. The workflow side (``--keep-going``)
is covered by tests/test_workflow.py.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from dicom_factory import write_series

from ctseg.cli import VERBS, main
from ctseg.inference.package import make_plan, save_package
from ctseg.models import build_model

REPO = Path(__file__).resolve().parents[1]


def _nii(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(path))
    return path


def _bomb(path: Path, shape=(4000, 4000, 1000)) -> Path:
    """A ~1 kB .nii.gz whose header declares 16 G int16 voxels."""
    h = nib.Nifti1Header()
    h.set_data_dtype(np.int16)
    h.set_data_shape(shape)
    h["vox_offset"] = 352
    with gzip.open(path, "wb") as fh:
        fh.write(h.binaryblock + b"\0" * 4 + b"\0" * 1000)
    return path


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {"dir": d}
    ct = np.random.default_rng(0).integers(-1000, 1500, (6, 8, 8)).astype(np.int16)
    f["ct"] = _nii(d / "ct.nii.gz", ct.T)
    f["bomb"] = _bomb(d / "bomb.nii.gz")
    nan = ct.T.astype(np.float32)
    nan[2, 3, 1] = np.nan
    f["nan"] = _nii(d / "nan_ct.nii.gz", nan)
    nan_nrrd = sitk.GetImageFromArray(ct.astype(np.float32))
    arr = sitk.GetArrayFromImage(nan_nrrd)
    arr[1, 1, 1] = np.inf
    img = sitk.GetImageFromArray(arr)
    sitk.WriteImage(img, str(d / "inf_ct.nrrd"))
    f["inf_nrrd"] = d / "inf_ct.nrrd"
    lab = np.zeros((8, 8, 6), np.uint8)
    lab[2:5, 2:5, 1:4] = 9
    f["labels"] = _nii(d / "labels.nii.gz", lab)
    f["float_labels"] = _nii(d / "float_labels.nii.gz", lab.astype(np.float32) + 0.5)
    f["neg_labels"] = _nii(d / "neg_labels.nii.gz", lab.astype(np.int16) - 1)
    nan_lab = lab.astype(np.float32)
    nan_lab[0, 0, 0] = np.nan
    f["nan_labels"] = _nii(d / "nan_labels.nii.gz", nan_lab)
    f["other_grid"] = _nii(d / "other_grid.nii.gz", np.zeros((8, 8, 7), np.uint8))
    f["garbage"] = d / "garbage.nii.gz"
    f["garbage"].write_bytes(b"\x1f\x8b not really gzip")
    f["missing"] = d / "does_not_exist.nii.gz"
    # DICOM series with an all-zero orientation in one file
    dcm = d / "dicom_zero_iop"
    files = write_series(dcm, ct.astype(np.float64))
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
    ds.save_as(files[2])
    f["dicom_bad"], f["dicom_bad_file"] = dcm, files[2]
    f["empty_dir"] = d / "empty_dir"
    f["empty_dir"].mkdir()
    # models: a good tiny one, a malicious one
    exp = {"task": "vertebrae", "model": "unet3d", "base_width": 4, "depth": 2, "labels": [9]}
    meta = {
        "task": "vertebrae",
        "dim": 3,
        "n_classes": 2,
        "class_ids": [0, 9],
        "spacing_mm": [1.0, 1.0, 1.0],
        "patch": [8, 8, 8],
        "hu_window": [-1000, 2000],
        "model_kwargs": {"model": "unet3d", "base_width": 4, "depth": 2, "norm": "instance"},
    }
    f["model"] = d / "model.pt"
    save_package(f["model"], build_model(exp, 2), exp, make_plan(meta, exp))
    f["evil_model"] = d / "evil_model.pt"
    f["pwned"] = d / "pwned"
    torch.save({"state_dict": _Evil(f["pwned"])}, f["evil_model"])
    f["bad_yaml"] = d / "bad.yaml"
    f["bad_yaml"].write_text("patch: [8, 8\n  copies: :\n")
    f["not_h5"] = d / "cube.h5"
    f["not_h5"].write_bytes(b"not hdf5")
    f["evil_zip"] = d / "evil.zip"
    with zipfile.ZipFile(f["evil_zip"], "w") as zf:
        zf.writestr("../.unpacked_evil/x", b"x")
    return f


def _matrix():
    """(id, verb args as a function of the fixture dict and an out folder, fragment of the
    offending file's name that the one-line message must contain)."""
    return [
        ("phantom-bad-level", lambda f, o: ["phantom", str(o / "p"), "--first", "Q7"], "Q7"),
        (
            "fetch-missing-file",
            lambda f, o: ["fetch", "c", "nifti", str(f["missing"]), "--out", str(o / "raw")],
            "does_not_exist",
        ),
        (
            "fetch-garbage-nifti",
            lambda f, o: ["fetch", "c", "nifti", str(f["garbage"]), "--out", str(o / "raw")],
            "garbage.nii.gz",
        ),
        (
            "fetch-bomb",
            lambda f, o: ["fetch", "c", "nifti", str(f["bomb"]), "--out", str(o / "raw")],
            "bomb.nii.gz",
        ),
        (
            "fetch-url-without-sha",
            lambda f, o: ["fetch", "c", "url", "http://127.0.0.1:9/x.zip", "--out", str(o / "r")],
            "x.zip",
        ),
        (
            "volume-missing",
            lambda f, o: ["volume", str(f["missing"]), "--out", str(o / "ct.nii.gz")],
            "does_not_exist",
        ),
        (
            "volume-bomb",
            lambda f, o: ["volume", str(f["bomb"]), "--out", str(o / "ct.nii.gz")],
            "bomb.nii.gz",
        ),
        (
            "volume-nan-ct",
            lambda f, o: ["volume", str(f["nan"]), "--out", str(o / "ct.nii.gz")],
            "nan_ct.nii.gz",
        ),
        (
            "volume-nan-labels-named-as-given",
            lambda f, o: [
                "volume",
                str(f["ct"]),
                "--labels",
                str(f["nan_labels"]),
                "--out",
                str(o / "ct.nii.gz"),
            ],
            str(Path("bad") / "nan_labels.nii.gz")[4:],
        ),
        (
            "volume-float-labels",
            lambda f, o: [
                "volume",
                str(f["ct"]),
                "--labels",
                str(f["float_labels"]),
                "--out",
                str(o / "ct.nii.gz"),
            ],
            "float_labels.nii.gz",
        ),
        (
            "volume-garbage",
            lambda f, o: ["volume", str(f["garbage"]), "--out", str(o / "ct.nii.gz")],
            "garbage.nii.gz",
        ),
        (
            "volume-zero-iop-dicom",
            lambda f, o: ["volume", str(f["dicom_bad"]), "--out", str(o / "ct.nii.gz")],
            "s0002.dcm",
        ),
        ("stats-bomb", lambda f, o: ["stats", str(f["bomb"])], "bomb.nii.gz"),
        ("stats-nan", lambda f, o: ["stats", str(f["nan"])], "nan_ct.nii.gz"),
        ("stats-inf-nrrd", lambda f, o: ["stats", str(f["inf_nrrd"])], "inf_ct.nrrd"),
        ("stats-zero-iop", lambda f, o: ["stats", str(f["dicom_bad"])], "s0002.dcm"),
        ("stats-empty-folder", lambda f, o: ["stats", str(f["empty_dir"])], "empty_dir"),
        ("stats-missing", lambda f, o: ["stats", str(f["missing"])], "does_not_exist"),
        (
            "metal-bomb",
            lambda f, o: ["metal", str(f["bomb"]), "--out", str(o / "m.nii.gz")],
            "bomb.nii.gz",
        ),
        (
            "metal-nan",
            lambda f, o: ["metal", str(f["nan"]), "--out", str(o / "m.nii.gz")],
            "nan_ct.nii.gz",
        ),
        (
            "metal-garbage",
            lambda f, o: ["metal", str(f["garbage"]), "--out", str(o / "m.nii.gz")],
            "garbage.nii.gz",
        ),
        (
            "drr-missing",
            lambda f, o: ["drr", str(f["missing"]), "--out", str(o / "d.nii.gz")],
            "does_not_exist",
        ),
        (
            "drr-bomb",
            lambda f, o: ["drr", str(f["bomb"]), "--out", str(o / "d.nii.gz")],
            "bomb.nii.gz",
        ),
        (
            "drr-nan",
            lambda f, o: ["drr", str(f["nan"]), "--out", str(o / "d.nii.gz")],
            "nan_ct.nii.gz",
        ),
        (
            "cube-missing-recipe",
            lambda f, o: [
                "cube",
                "--item",
                f"case=a,ct={f['ct']},labels={f['labels']}",
                "--recipe",
                str(f["missing"]),
                "--out",
                str(o / "c.h5"),
            ],
            "does_not_exist",
        ),
        (
            "cube-bad-yaml",
            lambda f, o: [
                "cube",
                "--item",
                f"case=a,ct={f['ct']},labels={f['labels']}",
                "--recipe",
                str(f["bad_yaml"]),
                "--out",
                str(o / "c.h5"),
            ],
            "bad.yaml",
        ),
        ("check-cube-missing", lambda f, o: ["check-cube", str(f["missing"])], "does_not_exist"),
        ("check-cube-not-hdf5", lambda f, o: ["check-cube", str(f["not_h5"])], "cube.h5"),
        (
            "train-missing-experiment",
            lambda f, o: ["train", "--experiment", str(f["missing"]), "--out", str(o / "t")],
            "does_not_exist",
        ),
        (
            "train-bad-yaml",
            lambda f, o: ["train", "--experiment", str(f["bad_yaml"]), "--out", str(o / "t")],
            "bad.yaml",
        ),
        (
            "predict-evil-model",
            lambda f, o: [
                "predict",
                str(f["evil_model"]),
                "--ct",
                str(f["ct"]),
                "--out",
                str(o / "p.nii.gz"),
            ],
            "evil_model.pt",
        ),
        (
            "predict-ct-folder",
            lambda f, o: [
                "predict",
                str(f["model"]),
                "--ct",
                str(f["dicom_bad"]),
                "--out",
                str(o / "p.nii.gz"),
            ],
            "dicom_zero_iop",
        ),
        (
            "predict-nan-ct",
            lambda f, o: [
                "predict",
                str(f["model"]),
                "--ct",
                str(f["nan"]),
                "--out",
                str(o / "p.nii.gz"),
            ],
            "nan_ct.nii.gz",
        ),
        (
            "predict-bomb-ct",
            lambda f, o: [
                "predict",
                str(f["model"]),
                "--ct",
                str(f["bomb"]),
                "--out",
                str(o / "p.nii.gz"),
            ],
            "bomb.nii.gz",
        ),
        (
            "metrics-float-pred",
            lambda f, o: [
                "metrics",
                str(f["float_labels"]),
                str(f["labels"]),
                "--out",
                str(o / "m.tsv"),
            ],
            "float_labels.nii.gz",
        ),
        (
            "metrics-negative-gt",
            lambda f, o: [
                "metrics",
                str(f["labels"]),
                str(f["neg_labels"]),
                "--out",
                str(o / "m.tsv"),
            ],
            "neg_labels.nii.gz",
        ),
        (
            "metrics-nan-gt",
            lambda f, o: [
                "metrics",
                str(f["labels"]),
                str(f["nan_labels"]),
                "--out",
                str(o / "m.tsv"),
            ],
            "nan_labels.nii.gz",
        ),
        (
            "metrics-other-grid",
            lambda f, o: [
                "metrics",
                str(f["labels"]),
                str(f["other_grid"]),
                "--out",
                str(o / "m.tsv"),
            ],
            "other_grid.nii.gz",
        ),
        (
            "centroids-nan",
            lambda f, o: ["centroids", str(f["nan_labels"]), "--out", str(o / "c.json")],
            "nan_labels.nii.gz",
        ),
        (
            "segment-evil-model",
            lambda f, o: [
                "segment",
                str(f["ct"]),
                "--model",
                str(f["evil_model"]),
                "--out",
                str(o / "s"),
            ],
            "evil_model.pt",
        ),
        (
            "segment-model-folder-without-model",
            lambda f, o: ["segment", str(f["ct"]), "--model", str(o), "--out", str(o / "s")],
            "model.pt",
        ),
        (
            "export-model-evil",
            lambda f, o: ["export-model", str(f["evil_model"]), "--out", str(o / "p.zip")],
            "evil_model.pt",
        ),
        (
            "import-model-not-a-zip",
            lambda f, o: ["import-model", str(f["bad_yaml"]), "--out", str(o / "imp")],
            "bad.yaml",
        ),
        (
            "centroids-missing",
            lambda f, o: ["centroids", str(f["missing"]), "--out", str(o / "c.json")],
            "does_not_exist",
        ),
    ]


MATRIX = _matrix()


class _AnyPath(dict):
    def __missing__(self, key):
        return Path(key)


def test_matrix_covers_every_verb():
    assert {case[1](_AnyPath(), Path("o"))[0] for case in MATRIX} == set(VERBS)


@pytest.mark.parametrize("argv_of,fragment", [c[1:] for c in MATRIX], ids=[c[0] for c in MATRIX])
def test_bad_input_one_line_error(bad, tmp_path, capsys, argv_of, fragment):
    argv = argv_of(bad, tmp_path)
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    out = capsys.readouterr()
    err = out.err.strip()
    assert rc not in (0, None), f"exit status {rc} for {argv}"
    assert "Traceback" not in out.err + out.out
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"ctseg {argv[0]}: error: "), err
    assert fragment in err, err
    assert "weights_only" not in err
    assert not bad["pwned"].exists()
    # nothing that looks complete was left behind
    assert not any(p.is_file() and not p.name.startswith(".") for p in tmp_path.rglob("*")), list(
        tmp_path.rglob("*")
    )


def test_subprocess_exit_code_and_no_traceback(bad, tmp_path):
    """The real console path (``python -m ctseg.cli``): status 1, one line, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "ctseg.cli", "stats", str(bad["bomb"])],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "bomb.nii.gz" in proc.stderr


def test_volume_error_names_the_users_own_label_file(bad, tmp_path, capsys):
    """Not a temporary copy's name (``ctseg volume`` used to link inputs into a temp folder)."""
    rc = main(
        [
            "volume",
            str(bad["ct"]),
            "--labels",
            str(bad["nan_labels"]),
            "--out",
            str(tmp_path / "ct.nii.gz"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and f"file {str(bad['nan_labels'])!r}" in err and "NaN" in err
    assert "tmp" not in err.replace(str(bad["dir"]), "")


def test_huge_label_id_through_metrics_cli(tmp_path, capsys):
    lab = np.zeros((6, 6, 6), np.uint32)
    lab[1:3, 1:3, 1:3] = 9
    lab[5, 5, 5] = 2_000_000_000
    img = sitk.GetImageFromArray(lab)
    sitk.WriteImage(img, str(tmp_path / "gt.nrrd"))
    rc = main(
        [
            "metrics",
            str(tmp_path / "gt.nrrd"),
            str(tmp_path / "gt.nrrd"),
            "--out",
            str(tmp_path / "m.tsv"),
        ]
    )
    assert rc == 0
    rows = (tmp_path / "m.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["9", "2000000000"]
