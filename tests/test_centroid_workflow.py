"""A centroid-only cohort end to end: NIfTI CTs with centroid files and no label maps train the
seed-004 localiser, which is scored and reported beside the published figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk
import yaml
from test_workflow import make_workdir, snakemake

from ctseg.phantom import PhantomParams, centroids_json, generate

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def centroid_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("centroid_only")
    data = root / "data"
    rows = ["case\tsource\tlocation\tcentroids\tsplit"]
    for i, split in enumerate(["train", "train", "train", "val", "test"]):
        ph = generate(60 + i, PhantomParams(shape=(48, 40, 64), spacing_mm=(7.0, 7.0, 7.0)))
        d = data / f"c{i}"
        d.mkdir(parents=True)
        sitk.WriteImage(ph.image("hu"), str(d / "ct.nii.gz"))
        (d / "points.json").write_text(centroids_json(ph.centroids))
        rows.append(f"c{i}\tnifti\t{d / 'ct.nii.gz'}\t{d / 'points.json'}\t{split}")
    cfg = yaml.safe_load(TINY.read_text())
    cfg["experiments"] = {
        "centroids": {
            "task": "centroids",
            "model": "unet3d",
            "localiser": {"spacing_mm": [7.0, 7.0, 7.0], "epochs": 3, "steps_per_epoch": 6},
        }
    }
    (root / "w").mkdir()
    work = make_workdir(
        root / "w",
        config=cfg,
        sheet="\n".join(rows) + "\n",
    )
    proc = snakemake("--cores", "2", "--configfile", "config.yaml", cwd=work, timeout=1500)
    if proc.returncode != 0:
        logs = sorted((work / "results" / "logs").rglob("*.log"))
        tail = "\n".join(f"== {p}\n{p.read_text()[-1500:]}" for p in logs if p.stat().st_size)
        pytest.fail(f"centroid-only workflow failed:\n{proc.stderr[-3000:]}\n{tail[-5000:]}")
    return work


@pytest.mark.slow
def test_centroid_only_cohort_trains_predicts_and_reports(centroid_run):
    res = centroid_run / "results"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(res / "volumes" / "c4" / "labels.nii.gz")))
    assert labels.max() == 0  # no label map anywhere: the model saw centroids only
    pred = json.loads((res / "predictions" / "centroids" / "c4.centroids.json").read_text())
    assert all({"label", "name", "x", "y", "z"} <= set(p) for p in pred)
    cent = (res / "eval" / "centroids" / "centroids.tsv").read_text().splitlines()
    assert cent[0].startswith("case\t") and len(cent) > 1
    md = (res / "report" / "summary.md").read_text()
    assert "7.76 mm, 9 of 12" in md and "centroids" in md
