"""A tiny robustness suite end to end: population phantoms, named families, per-family report."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk
import yaml
from test_workflow import make_workdir, snakemake

from ctseg.core.orientation import orientation_code

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"

SHEET = """case\tsource\tlocation\tsplit\tfamily
p1\tphantom\t31\ttrain\t
p2\tphantom\t32\ttrain\t
p3\tphantom\t33\ttrain\t
p4\tphantom\t34\tval\t
q1\tphantom\t41\ttest\torient_pil
q2\tphantom\t42\ttest\tsmall
q3\tphantom\t43\ttest\t
"""


@pytest.fixture(scope="module")
def robustness_run(tmp_path_factory):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["phantom"] = {
        "population": {
            "levels": ["T1", "S"],
            "min_levels": 6,
            "spacing_inplane_mm": [6.0, 7.0],
            "spacing_slice_mm": [6.0, 7.0],
            "max_voxels": 150000,
        },
        "families": {
            "orient_pil": {"orientations": ["PIL"]},
            "small": {"body_scale": [0.75, 0.75]},
        },
    }
    cfg["experiments"] = {"vert3d": cfg["experiments"]["vert3d"]}
    cfg["experiments"]["vert3d"]["labels"] = list(range(8, 27))
    work = make_workdir(tmp_path_factory.mktemp("robust"), config=cfg, sheet=SHEET)
    proc = snakemake("--cores", "2", "--configfile", "config.yaml", cwd=work, timeout=1500)
    if proc.returncode != 0:
        logs = sorted((work / "results" / "logs").rglob("*.log"))
        tail = "\n".join(f"== {p}\n{p.read_text()[-1500:]}" for p in logs if p.stat().st_size)
        pytest.fail(f"robustness workflow failed:\n{proc.stderr[-3000:]}\n{tail[-5000:]}")
    return work


@pytest.mark.slow
def test_families_shape_their_cases(robustness_run):
    res = robustness_run / "results"
    pil = sitk.ReadImage(str(res / "volumes" / "q1" / "ct.nii.gz"))
    # stored PIL; a left-handed code comes back from DICOM with the slice axis reversed (PIR)
    assert orientation_code(pil)[:2] == "PI"
    # predictions lie on each case's own grid, whatever its orientation
    for case in ("q1", "q2", "q3"):
        ct = sitk.ReadImage(str(res / "volumes" / case / "ct.nii.gz"))
        pred = sitk.ReadImage(str(res / "predictions" / "vert3d" / f"{case}.nii.gz"))
        assert pred.GetSize() == ct.GetSize() and pred.GetDirection() == ct.GetDirection()


@pytest.mark.slow
def test_report_shows_every_family(robustness_run):
    md = (robustness_run / "results" / "report" / "summary.md").read_text()
    assert "## Vertebra models by family of variation (robustness suite)" in md
    section = md.split("## Vertebra models by family of variation")[1].split("\n## ")[0]
    for family in ("orient_pil", "small", "in-distribution"):
        assert f"| {family} | vert3d | 1 |" in section, section


def dry_run_jobs(tmp_path, cfg, sheet):
    from test_workflow import planned_jobs

    work = make_workdir(tmp_path, config=cfg, sheet=sheet)
    proc = snakemake("-n", "--configfile", "config.yaml", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return planned_jobs(proc.stdout), proc


def test_pretrained_experiment_has_no_cube_or_train_job(tmp_path, monkeypatch):
    cfg = yaml.safe_load(TINY.read_text())
    model = tmp_path / "elsewhere" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(b"stand-in: a dry run only checks that the file exists")
    cfg["experiments"] = {"vert3d": {**cfg["experiments"]["vert3d"], "pretrained": str(model)}}
    (tmp_path / "w").mkdir()
    jobs, proc = dry_run_jobs(tmp_path / "w", cfg, None)
    assert "train" not in jobs and "cube" not in jobs
    assert jobs["predict"] == 1 and jobs["evaluate"] == 1  # the tiny sheet's one test case
    assert str(model) in proc.stdout or "elsewhere/model.pt" in proc.stdout


def test_predict_split_cases_are_segmented_but_not_scored(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    sheet = (REPO / cfg["cases"]).read_text().rstrip(
        "\n"
    ) + "\nnew1\tphantom\t99\t\t\t\t\tpredict\n"
    (tmp_path / "w").mkdir()
    jobs, proc = dry_run_jobs(tmp_path / "w", cfg, sheet)
    assert "results/outputs/vert3d/new1/qc.json" in proc.stdout
    assert "results/predictions/metal2d/new1.nii.gz" in proc.stdout
    # the test case and the predict case get the standard outputs; only the test case is scored
    assert jobs["case_outputs"] == 2


def test_test_case_without_labels_is_an_error_naming_it(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    img = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkInt16), str(img))
    sheet = (REPO / cfg["cases"]).read_text().rstrip(
        "\n"
    ) + f"\nreal1\tnifti\t{img}\t\t\t\t\ttest\n"
    work = make_workdir(tmp_path, config=cfg, sheet=sheet)
    proc = snakemake("-n", "--configfile", "config.yaml", cwd=work)
    assert proc.returncode != 0
    assert "case 'real1': split: a test case needs labels" in proc.stderr + proc.stdout
