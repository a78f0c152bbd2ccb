"""Resources, GPU requests, local rules and raw/ storage, as Snakemake plans and measures them.

A 300-slice DICOM series (256 x 256, 39 MB) goes through fetch, dicom_summary and to_volume:
the memory each job asks for must cover its measured peak RSS (the rules' `benchmark:` files)
without asking for many times more, and raw/ must hard-link the series instead of copying it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dicom_factory import write_series

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
TINY = REPO / "tests" / "configs" / "tiny.yaml"
N_SLICES, SIZE = 300, 256
BASE_MB = 300


def workdir(path: Path, sheet: str, **overrides) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(overrides)
    (path / "cases.tsv").write_text(sheet)
    cfg["cases"] = "cases.tsv"
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "2", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)


def job_resources(out: str) -> dict[str, list[dict[str, str]]]:
    """{rule: [resources of each printed job]} from Snakemake's job listing."""
    found: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in out.splitlines():
        m = re.match(r"^(local)?rule (\w+):$", line)
        if m:
            rule = m.group(2)
            found.setdefault(rule, []).append({"local": str(bool(m.group(1)))})
        elif rule and line.startswith("    resources: "):
            items = line[len("    resources: ") :].split(", ")
            found[rule][-1].update(i.split("=", 1) for i in items if "=" in i)
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def big_run(tmp_path_factory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(3)
    hu = rng.integers(-1000, 2000, size=(N_SLICES, SIZE, SIZE)).astype(np.int16)
    series = root / "scans" / "big"
    write_series(series, hu, spacing=(1.0, 1.0, 1.5))
    sheet = "case\tsource\tlocation\tsplit\nbig\tdicom\tscans/big\ttrain\n"
    # a realistic floor for one python process, so that the per-MB term must carry the rest
    work = workdir(root, sheet, resources={"default": {"mem_mb": BASE_MB, "runtime": 10}})
    proc = snakemake(work, "results/stats/big.json", "results/volumes/big/ct.nii.gz")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work, series, proc.stdout + proc.stderr


def test_raw_hard_links_the_series_instead_of_copying_it(big_run):
    work, series, _ = big_run
    sources = sorted(p for p in series.rglob("*") if p.is_file())
    assert len(sources) == N_SLICES
    manifest = json.loads((work / "results/raw/big.manifest.json").read_text())
    by_path = {f["path"]: f for f in manifest["files"]}
    for src in sources:
        raw = work / "results/raw/big/dicom" / src.relative_to(series)
        assert raw.stat().st_ino == src.stat().st_ino, f"{raw} is a copy"
        assert src.stat().st_nlink >= 2
        entry = by_path[f"dicom/{src.name}"]
        assert entry["size"] == src.stat().st_size
    assert by_path["dicom/s0000.dcm"]["sha256"] == sha256(sources[0])


def test_memory_estimate_covers_measured_peak_rss(big_run):
    work, series, out = big_run
    size_mb = sum(p.stat().st_size for p in series.rglob("*") if p.is_file()) / 1e6
    assert size_mb > 35
    resources = job_resources(out)
    for rule in ("dicom_summary", "to_volume"):
        asked = int(resources[rule][0]["mem_mb"])
        bench = pd.read_csv(work / f"results/benchmarks/{rule}/big.tsv", sep="\t")
        peak = float(bench["max_rss"].iloc[0])
        # covers the peak, and not wildly more: the estimate grows with the input
        assert peak <= asked <= BASE_MB + 3 * peak, (rule, peak, asked, size_mb)
        assert asked - BASE_MB >= 0.5 * (peak - 200), (rule, peak, asked)


def gpu_plan(tmp_path: Path, **overrides) -> dict[str, set[str]]:
    sheet = (REPO / "tests/configs/tiny_cases.tsv").read_text()
    work = workdir(tmp_path, sheet, **overrides)
    proc = snakemake(work, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = job_resources(proc.stdout)
    return {rule: {j.get("gpu", "0") for j in jobs} for rule, jobs in res.items()}


def test_gpu_requests_follow_the_configured_devices(tmp_path):
    (tmp_path / "a").mkdir()
    plan = gpu_plan(tmp_path / "a")
    assert plan["drr"] == {"0"} and plan["predict"] == {"0"}
    assert plan["train"] == {"1"}  # tiny.yaml: resources.train.gpu 1
    (tmp_path / "b").mkdir()
    plan = gpu_plan(tmp_path / "b", use_gpu=True)
    assert plan["drr"] == {"1"} and plan["predict"] == {"1"} and plan["train"] == {"1"}
    (tmp_path / "c").mkdir()
    cfg = yaml.safe_load(TINY.read_text())
    cfg["drr"]["device"] = "cpu"
    for exp in cfg["experiments"].values():
        exp["device"] = "cuda"
    cfg["resources"]["train"]["gpu"] = 0
    plan = gpu_plan(tmp_path / "c", drr=cfg["drr"], experiments=cfg["experiments"],
                    resources=cfg["resources"], use_gpu=True)  # fmt: skip
    assert plan["drr"] == {"0"} and plan["predict"] == {"1"} and plan["train"] == {"1"}


def test_cheap_aggregates_are_local_rules():
    """Declared in the Snakefile's `localrules:` (a dry run prints no executor difference)."""
    text = (REPO / "Snakefile").read_text()
    block = re.search(r"(?m)^localrules:\n((?:    \w+,\n)+)", text)
    assert block, "Snakefile has no localrules: block"
    local = set(re.findall(r"(\w+),", block.group(1)))
    assert local == {
        "all", "dataset", "summary_table", "metal_summary", "drr_stack", "dice_plot",
        "centroid_plot", "report_tables",
    }  # fmt: skip
    rules = set(re.findall(r"(?m)^rule (\w+):", text))
    for smk in (REPO / "rules").glob("*.smk"):
        rules |= set(re.findall(r"(?m)^rule (\w+):", smk.read_text()))
    assert local <= rules


def test_every_rule_has_a_benchmark_file():
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^(?=rule )", smk.read_text()):
            m = re.match(r"rule (\w+):", block)
            if m:
                assert "\n    benchmark:\n" in block, f"rule {m.group(1)} ({smk.name})"


def common_functions(*names: str, **namespace) -> dict:
    """Functions of rules/common.smk (plain Python) compiled on their own, for unit tests."""
    import ast
    import math
    import os

    tree = ast.parse((REPO / "rules" / "common.smk").read_text())
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {d.name for d in defs} == set(names)
    ns = {"math": math, "os": os, **namespace}
    exec(compile(ast.Module(body=defs, type_ignores=[]), "common.smk", "exec"), ns)
    return ns


def test_estimates_scale_with_input_size_and_attempt(tmp_path):
    ns = common_functions(
        "_input_mb", "mem_mb", "runtime", DEFAULT_RES={"mem_mb": 1000, "runtime": 10}
    )
    folder = tmp_path / "raw"
    (folder / "dicom").mkdir(parents=True)
    for k in range(4):
        (folder / "dicom" / f"s{k}.dcm").write_bytes(b"\0" * 2_500_000)  # 10 MB in all
    code = tmp_path / "code.py"
    code.write_text("x" * 5_000_000)

    class Inputs(list):  # what Snakemake passes: iterable, with named entries
        pass

    inputs = Inputs([str(folder), str(code)])
    inputs.code = [str(code)]  # code inputs do not count
    mem, minutes = ns["mem_mb"](8.0), ns["runtime"](0.5)
    assert ns["_input_mb"](inputs) == pytest.approx(10.0)
    assert mem(None, inputs, 1) == 1000 + 80
    assert mem(None, inputs, 2) == 2 * 1080 and mem(None, inputs, 3) == 3 * 1080
    assert minutes(None, inputs, 1) == 15 and minutes(None, inputs, 2) == 30
    assert ns["mem_mb"](8.0, base=4000)(None, Inputs(), 1) == 4000
