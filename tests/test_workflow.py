"""The workflow as a user runs it: lint, formatting, the DAG, bad input, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import report_browser
import SimpleITK as sitk
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
TINY = REPO / "tests" / "configs" / "tiny.yaml"


def snakemake(*args: str, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the repository's workflow with ``cwd`` as working directory (its config.yaml, results/)."""
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def make_workdir(tmp: Path, config: dict | None = None, sheet: str | None = None) -> Path:
    """A fresh working directory holding a config (tiny by default) and its case sheet."""
    cfg = yaml.safe_load(TINY.read_text()) if config is None else config
    sheet_text = sheet if sheet is not None else (REPO / cfg["cases"]).read_text()
    (tmp / "cases.tsv").write_text(sheet_text)
    cfg["cases"] = "cases.tsv"
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp


def planned_jobs(out: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table of a dry run."""
    counts: dict[str, int] = {}
    lines = out.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("Job stats")) + 3
    except StopIteration:
        return counts
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


# ------------------------------------------------------------------ static checks
def test_snakemake_lint_is_clean():
    proc = subprocess.run(
        [SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_snakefmt_check_is_clean():
    proc = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _n_stages(loc: dict) -> int:
    refiner = loc.get("refiner") not in (None, False)  # {} is the refiner with its defaults
    return (
        int(loc.get("ensemble", 1))
        + refiner
        + (refiner and loc.get("regions") not in (None, False))
    )


def expected_jobs(cfg: dict, sheet: pd.DataFrame) -> dict[str, int]:
    """Every job a fresh run of ``cfg`` must plan, per rule, computed from the config alone."""
    n = len(sheet)
    n_test = int((sheet["split"] == "test").sum())
    n_pred = int((sheet["split"] == "predict").sum())
    exps = cfg["experiments"]
    tasks = [e["task"] for e in exps.values()]
    trained = [e for e in exps.values() if not e.get("pretrained")]
    cubes = {e["cube"] for e in trained if e.get("cube")}
    n_voxel = sum(t != "centroids" for t in tasks)
    jobs = {
        "fetch": n,
        "dicom_summary": n,
        "to_volume": n,
        "metal": n,
        "summary_table": 1,
        "metal_summary": 1,
        "drr": n,  # one job renders every view of a case
        "drr_stack": n_test if "bone_drr" in tasks else 0,
        "cube": len(cubes),
        "check_cube": len(cubes),
        "dataset": len(trained),
        "train": len(trained),
        # a localiser's stages: each ensemble member's first stage, the refiner, the regions
        "train_stage": sum(
            _n_stages(e.get("localiser", {})) for e in trained if e["task"] == "centroids"
        ),
        # voxel models predict the test cases, vertebra and metal models the predict cases too
        "predict": n_voxel * n_test + sum(t in ("vertebrae", "metal") for t in tasks) * n_pred,
        "predict_centroids": tasks.count("centroids") * (n_test + n_pred),
        "case_outputs": tasks.count("vertebrae") * (n_test + n_pred),
        "evaluate": len(exps),
        "dice_plot": n_voxel,
        "centroid_plot": tasks.count("vertebrae") + tasks.count("centroids"),
        "overlay_plot": sum(t in ("vertebrae", "metal") for t in tasks) if n_test else 0,
        "report_tables": 1,
        "all": 1,
    }
    return {rule: k for rule, k in jobs.items() if k}


def test_default_dag_has_a_job_per_case_and_stage(tmp_path):
    """In a fresh copy (never the repository's own results/): exactly the jobs of a full run."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    sheet = pd.read_csv(REPO / cfg["cases"], sep="\t", dtype=str)
    work = make_workdir(tmp_path, config=cfg)
    proc = snakemake("-n", "--cores", "2", "--configfile", "config.yaml", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc.stdout) == expected_jobs(cfg, sheet)
    # longest training first: vert3d's dataset and train jobs share the localiser's priority
    raised = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        wc = re.search(r"^    wildcards: (.*)$", block, re.M)
        if head and re.search(r"^    priority: 1$", block, re.M):
            raised.add((head.group(1), wc.group(1) if wc else ""))
    stages = [
        f"first_stage_{k}" for k in range(cfg["experiments"]["centroids"]["localiser"]["ensemble"])
    ]
    assert raised == {
        ("dataset", "experiment=vert3d"),
        ("train", "experiment=vert3d"),
        ("dataset", "experiment=centroids"),
        ("train", "experiment=centroids"),
        *(
            ("train_stage", f"experiment=centroids, stage={s}")
            for s in [*stages, "refiner", "regions"]
        ),
    }


def test_longest_training_is_counted_in_voxels_through_the_network():
    from ctseg.core.config import planned_training_voxels

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    exps, cubes = cfg["experiments"], cfg["cubes"]
    x, y, z = cubes["vert"]["patch"]
    v3 = exps["vert3d"]
    assert planned_training_voxels(v3, cubes) == (
        v3["epochs"] * v3["steps_per_epoch"] * v3["batch_size"] * x * y * z
    )
    v2 = exps["vert2d"]  # a sagittal slice of the same patch: y x z voxels
    assert planned_training_voxels(v2, cubes) == (
        v2["epochs"] * v2["steps_per_epoch"] * v2["batch_size"] * y * z
    )
    axial = {**v2, "slice_axis": "axial"}
    assert planned_training_voxels(axial, cubes) == planned_training_voxels(v2, cubes) * x // z
    for name in ("centroids", "drr_none"):
        assert planned_training_voxels(exps[name], cubes) == 0
    assert planned_training_voxels({**v3, "pretrained": "m.pt"}, cubes) == 0


def test_tiny_dag_plans_the_exact_job_set(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    sheet = pd.read_csv(REPO / cfg["cases"], sep="\t", dtype=str)
    work = make_workdir(tmp_path)
    proc = snakemake("-n", "--configfile", "config.yaml", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc.stdout) == expected_jobs(cfg, sheet)


# ------------------------------------------------------------------ bad case sheets
def test_missing_column_in_case_sheet_names_the_sheet(tmp_path):
    work = make_workdir(tmp_path, sheet="case\tsource\tlocation\nx1\tphantom\t1\n")
    proc = snakemake("-n", cwd=work)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "missing column(s) split" in err and "cases.tsv" in err


def test_unknown_source_kind_names_the_case(tmp_path):
    sheet = "case\tsource\tlocation\tsplit\nok1\tphantom\t1\ttrain\nbad7\tpacs\tfoo\ttest\n"
    work = make_workdir(tmp_path, sheet=sheet)
    proc = snakemake("-n", cwd=work)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "'bad7'" in err and "pacs" in err and "cases.tsv" in err


BAD_SHEET = (
    "case\tsource\tlocation\tlabel_map\tsplit\n"
    "ok1\tphantom\t1\t\ttrain\n"
    "nofile\tnifti\tscans/missing.nii.gz\t\ttrain\n"
    "badmap\tphantom\t2\tno_such_map\tval\n"
    "bad7\tpacs\tfoo\t\ttest\n"
    "dotted.id\tphantom\t3\t\ttest\n"
)


def test_every_bad_row_is_listed_in_one_error_before_any_job(tmp_path):
    """Fail fast: with --keep-going too, one message names every bad row and nothing runs."""
    work = make_workdir(tmp_path, sheet=BAD_SHEET)
    proc = snakemake("--keep-going", "--cores", "1", cwd=work)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "cases.tsv: 4 problem(s)" in err, err[-3000:]
    assert "case 'nofile': location: nifti file" in err and "missing.nii.gz does not exist" in err
    assert "case 'badmap': label_map: unknown label_map 'no_such_map'" in err
    assert "case 'bad7'" in err and "pacs" in err
    assert "case 'dotted.id'" in err
    assert "'ok1'" not in err
    assert "exclude_cases" in err
    assert not (work / "results").exists()


def test_excluded_cases_leave_every_job_and_aggregate(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["exclude_cases"] = {
        "nofile": "scan not delivered",
        "badmap": "labels in an unknown convention",
        "bad7": "PACS export pending",
        "dotted.id": "rename",
    }
    sheet = BAD_SHEET + "ok2\tphantom\t4\t\ttrain\n"
    work = make_workdir(tmp_path, config=cfg, sheet=sheet)
    proc = snakemake("-n", "--configfile", "config.yaml", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    jobs = planned_jobs(out)
    assert jobs["fetch"] == 2 and jobs["drr"] == 2
    for case in cfg["exclude_cases"]:
        assert f"/{case}" not in out and f"case={case}" not in out


def test_header_only_case_sheet_names_the_sheet(tmp_path):
    work = make_workdir(tmp_path, sheet="case\tsource\tlocation\tsplit\n")
    proc = snakemake("-n", cwd=work)
    assert proc.returncode != 0
    assert "case sheet cases.tsv has a header but no cases" in proc.stdout + proc.stderr


def test_unknown_case_sheet_column_is_named(tmp_path):
    work = make_workdir(
        tmp_path, sheet="case\tsource\tlocation\tsplit\tspilt\nx1\tphantom\t1\ttrain\ttest\n"
    )
    proc = snakemake("-n", cwd=work)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "unknown column(s) 'spilt'" in err and "cases.tsv" in err


def test_case_id_rule_agrees_in_readme_and_schema():
    schema = yaml.safe_load((REPO / "schemas/cases.schema.yaml").read_text())
    assert schema["properties"]["case"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_-]*$"
    readme = (REPO / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `case` |"))
    assert "starts with a letter or digit" in row and "`_`, `-`" in row and "no `.`" in row


def test_unreadable_scan_fails_its_case_alone(tmp_path):
    """--keep-going finishes the good case; the bad one names case and file, leaves nothing."""
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"this is not a nifti file")
    sheet = (
        f"case\tsource\tlocation\tsplit\ngood1\tphantom\t5\ttrain\nbad1\tnifti\t{broken}\tpredict\n"
    )
    (tmp_path / "w").mkdir()
    work = make_workdir(tmp_path / "w", sheet=sheet)
    proc = snakemake(
        "--cores",
        "2",
        "--keep-going",
        "results/volumes/good1/ct.nii.gz",
        "results/volumes/bad1/ct.nii.gz",
        cwd=work,
    )
    assert proc.returncode != 0
    assert (work / "results/volumes/good1/ct.nii.gz").is_file()
    assert not (work / "results/volumes/bad1/ct.nii.gz").exists()
    assert not list((work / "results/volumes").glob("bad1/*.nii.gz"))
    logs = "".join(p.read_text() for p in (work / "results/logs").rglob("*bad1*.log"))
    assert "bad1" in logs and "broken.nii.gz" in logs, logs[-2000:]


def test_a_failed_case_excluded_gives_aggregates_of_the_rest(tmp_path):
    """One broken case blocks the cohort tables; listed in exclude_cases, the tables are built
    from the cases that succeeded (never from a stale output of the broken one)."""
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"this is not a nifti file")
    sheet = (
        f"case\tsource\tlocation\tsplit\ngood1\tphantom\t5\ttrain\nbad1\tnifti\t{broken}\ttest\n"
    )
    (tmp_path / "w").mkdir()
    work = make_workdir(tmp_path / "w", sheet=sheet)
    targets = ["results/stats/summary.tsv", "results/metal/summary.tsv"]
    proc = snakemake("--cores", "2", "--keep-going", *targets, cwd=work)
    assert proc.returncode != 0
    assert not (work / targets[0]).exists() and not (work / targets[1]).exists()
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["exclude_cases"] = {"bad1": "unreadable NIfTI from the scanner export"}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = snakemake("--cores", "2", "--keep-going", *targets, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for target in targets:
        table = pd.read_csv(work / target, sep="\t", dtype=str)
        assert list(table["case"]) == ["good1"], table


def test_report_lists_the_excluded_cases(tmp_path):
    from ctseg.report import write_summary_md

    out = tmp_path / "summary.md"
    write_summary_md(
        out, stats_tsv=None, metal_tsv=None, experiments={}, excluded={"bad1": "unreadable"}
    )
    md = out.read_text()
    assert "## Cases left out (config exclude_cases)" in md
    assert "| bad1 | unreadable |" in md


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One run of the whole workflow on the tiny config; later tests inspect its outputs."""
    work = make_workdir(tmp_path_factory.mktemp("tiny"))
    proc = snakemake("--cores", "2", "--configfile", "config.yaml", cwd=work, timeout=1500)
    if proc.returncode != 0:
        logs = sorted((work / "results" / "logs").rglob("*.log"))
        tail = "\n".join(f"== {p}\n{p.read_text()[-1500:]}" for p in logs if p.stat().st_size)
        pytest.fail(f"tiny workflow failed:\n{proc.stderr[-4000:]}\n{tail[-6000:]}")
    return work


@pytest.mark.slow
def test_a_metal_setting_reruns_the_metal_chain_and_not_the_vertebra_models(tiny_run, tmp_path):
    """The vertebra cube reads each case's CT and labels, not its metal mask: a changed metal
    threshold replans the metal jobs, the metal cube and metal2d, and leaves the vertebra
    cube and vert3d alone (before, the vertebra cube took every item file as input)."""
    work = tmp_path / "work"
    shutil.copytree(tiny_run, work, symlinks=True)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["metal"]["threshold_hu"] = 2500
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = snakemake("-n", "--configfile", "config.yaml", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    jobs, rule = set(), None
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("wildcards:"):
            jobs.add((rule, line.split(":", 1)[1].strip()))
    assert ("cube", "cube=metal") in jobs and ("train", "experiment=metal2d") in jobs
    assert ("cube", "cube=vert") not in jobs
    assert not {j for j in jobs if j[0] in ("train", "predict") and "vert3d" in j[1]}


@pytest.mark.slow
def test_tiny_run_writes_every_declared_output(tiny_run):
    proc = snakemake("-n", "--configfile", "config.yaml", cwd=tiny_run)
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    res = tiny_run / "results"
    for case in ["t1", "t2", "t3", "t4"]:
        manifest = json.loads((res / "raw" / f"{case}.manifest.json").read_text())
        assert manifest["case"] == case and manifest["files"]
        for v in cfg["drr"]["views"]:
            assert (res / "drr" / case / f"{v['name']}.png").stat().st_size > 1000
    for exp in cfg["experiments"]:
        assert (res / "models" / exp / "model.pt").stat().st_size > 1000
        hist = pd.read_csv(res / "models" / exp / "history.tsv", sep="\t")
        spec = cfg["experiments"][exp]
        epochs = spec["localiser"]["epochs"] if spec["task"] == "centroids" else spec["epochs"]
        assert len(hist) == epochs
        assert np.isfinite(hist["train_loss"]).all()


@pytest.mark.slow
def test_tiny_run_volumes_match_phantom_truth(tiny_run):
    res = tiny_run / "results"
    ct = sitk.ReadImage(str(res / "volumes/t1/ct.nii.gz"))
    labels = sitk.ReadImage(str(res / "volumes/t1/labels.nii.gz"))
    assert ct.GetPixelID() == sitk.sitkInt16
    assert ct.GetSize() == (48, 40, 64)
    assert np.allclose(ct.GetSpacing(), (7.0, 7.0, 7.0))
    assert labels.GetSize() == ct.GetSize() and np.allclose(labels.GetOrigin(), ct.GetOrigin())
    ids = set(np.unique(sitk.GetArrayFromImage(labels)).tolist()) - {0}
    assert ids == set(range(8, 25))  # T1..L5
    stats = json.loads((res / "stats/t1.json").read_text())
    arr = sitk.GetArrayFromImage(ct)
    assert stats["hu_max"] == pytest.approx(float(arr.max()))
    assert stats["hu_mean"] == pytest.approx(float(arr.mean()), rel=1e-4)
    centre = ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ct.GetSize()])
    assert np.allclose(stats["center_mm"], centre, atol=1e-3)
    for key in ("PHANTOM", "PatientName", "PatientID"):
        assert key not in (res / "stats/t1.json").read_text()
    metal = json.loads((res / "metal/t1.json").read_text())
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(res / "raw/t1/metal_truth.nii.gz")))
    assert metal["threshold_hu"] == 3000 and metal["voxels"] > 0
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(res / "metal/t1.nii.gz")))
    assert (arr[mask > 0] > 3000).all()
    # blur and noise move the boundary a little; the bulk of the implant must be found
    assert (mask[truth > 0] > 0).mean() > 0.5
    clean = json.loads((res / "metal/t2.json").read_text())
    assert clean["voxels"] == 0  # no implants in t2


@pytest.mark.slow
def test_tiny_run_evaluation_is_sane(tiny_run):
    res = tiny_run / "results"
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    for exp, spec in cfg["experiments"].items():
        if spec["task"] == "centroids":  # scored by identification only: no voxel metrics
            cents = pd.read_csv(res / "eval" / exp / "centroids.tsv", sep="\t")
            assert set(cents["case"]) == {"t4"}
            continue
        metrics = pd.read_csv(res / "eval" / exp / "metrics.tsv", sep="\t")
        assert set(metrics["case"]) == {"t4"}
        assert metrics["dice"].between(0, 1).all()
        summary = pd.read_csv(res / "eval" / exp / "summary.tsv", sep="\t")
        assert "ALL" in set(summary["case"].astype(str))
    # Two epochs cannot teach 17 vertebra classes (the default config and test_train's
    # overfit test show learning); here the evaluation must cover every true vertebra.
    vert = pd.read_csv(res / "eval/vert3d/metrics.tsv", sep="\t")
    assert set(range(8, 25)) <= set(vert["label"])
    cents = pd.read_csv(res / "eval/vert3d/centroids.tsv", sep="\t")
    truth = json.loads((res / "volumes/t4/centroids.json").read_text())
    assert {c["name"] for c in truth} <= set(cents["vertebra"])
    finite = cents["error_mm"].dropna()
    assert (finite >= 0).all() and all(math.isfinite(v) for v in finite)
    # Bone on DRRs is large and high-contrast: the 2D U-Net learns it within the tiny budget.
    # Chance level (every pixel called bone) is 2f / (1 + f) for a bone fraction f of ~10 %.
    drr = pd.read_csv(res / "eval/drr_local/metrics.tsv", sep="\t")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(res / "drr/t4/labels_stack.nii.gz"))) > 0
    chance = 2 * truth.mean() / (1 + truth.mean())
    assert drr["dice"].mean() > max(0.5, 2 * chance)


@pytest.mark.slow
def test_tiny_run_report(tiny_run, tmp_path):
    md = (tiny_run / "results/report/summary.md").read_text()
    for exp in ("vert3d", "metal2d", "drr_local"):
        assert exp in md
    assert "Dice" in md and "HD95" in md
    proc = snakemake(
        "--configfile", "config.yaml", "--report", "results/report/report.html", cwd=tiny_run
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if report_browser.ensure_chromium() is None:
        pytest.skip(f"no headless browser: {report_browser.unavailable_reason}")
    html = tiny_run / "results/report/report.html"
    result = report_browser.assert_report_loads(html, out_dir=tmp_path)
    # every PNG the rules mark with report(): metal QC and DRR per case, cube QC, loss and
    # evaluation plots per experiment
    assert result["n_images"] >= 20


def test_gpu_config_is_valid_and_plans_the_residual_unet(tmp_path):
    """config.gpu.yaml replaces config.yaml as a whole and adds seed 003's residual 3D U-Net."""
    cfg = yaml.safe_load((REPO / "config.gpu.yaml").read_text())
    work = make_workdir(tmp_path, config=cfg, sheet=(REPO / cfg["cases"]).read_text())
    proc = snakemake("-n", "--configfile", "config.yaml", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs["train"] == len(cfg["experiments"]) and "resunet3d" in cfg["experiments"]
    assert cfg["resources"]["train"]["gpu"] == 1
