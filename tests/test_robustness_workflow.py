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
    assert orientation_code(pil) == "PIL"
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
