"""The workflow deployed as a Snakemake module (`module ctseg: snakefile: ...`, as snakedeploy
and the workflow catalog deploy it): same jobs, its own library files as code inputs, and its
own copy of ctseg at parse time and in jobs, whatever the host environment has installed.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
TINY = REPO / "tests" / "configs" / "tiny.yaml"

HOST_SNAKEFILE = """\
configfile: "config.yaml"


module ctseg:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from ctseg
"""


def workdir(path: Path) -> Path:
    """A folder holding the tiny config and its case sheet, nothing of the repository."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(TINY.read_text())
    (path / "cases.tsv").write_text((REPO / cfg["cases"]).read_text())
    cfg["cases"] = "cases.tsv"
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def decoy_ctseg(root: Path) -> Path:
    """A different `ctseg` on the host's PYTHONPATH; importing any of it fails loudly."""
    pkg = root / "ctseg"
    (pkg / "core").mkdir(parents=True)
    boom = "raise ImportError('decoy ctseg imported instead of the workflow copy')\n"
    (pkg / "__init__.py").write_text(boom)
    (pkg / "core" / "__init__.py").write_text(boom)
    return root


def run(cwd: Path, *args: str, snakefile: Path | None = None, env=None):
    cmd = [SNAKEMAKE, "--cores", "2", *args]
    if snakefile is not None:
        cmd[1:1] = ["-s", str(snakefile)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


def jobs_of(out: str) -> dict[str, list[dict]]:
    """{rule: [{"input": [...], "wildcards": "..."}]} from a dry run's printed jobs."""
    jobs: dict[str, list[dict]] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            current = {"input": [], "wildcards": ""}
            jobs.setdefault(m.group(1), []).append(current)
        elif current is not None and line.startswith("    input: "):
            current["input"] = [s.strip() for s in line[len("    input: ") :].split(",")]
        elif current is not None and line.startswith("    wildcards: "):
            current["wildcards"] = line.split(":", 1)[1].strip()
    return jobs


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("module")
    work = workdir(root / "host")
    (work / "Snakefile").write_text(HOST_SNAKEFILE.format(snakefile=REPO / "Snakefile"))
    env = dict(os.environ, PYTHONPATH=str(decoy_ctseg(root / "decoy")))
    return work, env


def test_module_plans_the_same_jobs_as_a_direct_run(host, tmp_path):
    work, env = host
    as_module = run(work, "-n", env=env)
    assert as_module.returncode == 0, as_module.stderr[-3000:]
    direct = run(workdir(tmp_path / "direct"), "-n", snakefile=REPO / "Snakefile")
    assert direct.returncode == 0, direct.stderr[-3000:]

    def counts(out):
        return {r: sorted(j["wildcards"] for j in js) for r, js in jobs_of(out).items()}

    planned = counts(as_module.stdout)
    assert planned == counts(direct.stdout)
    tiny = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    assert len(planned["fetch"]) == 4 and len(planned["train"]) == len(tiny["experiments"])


def test_module_code_inputs_are_the_workflows_own_files(host):
    """The code digests a module's jobs read hash the workflow's own library files (not the
    host environment's decoy ctseg), so editing the module's code reruns its rules."""
    work, env = host
    proc = run(work, "-n", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = jobs_of(proc.stdout)
    for rule, script, module in [
        ("metal", "metal", "ctseg/metal.py"),
        ("train", "train", "ctseg/training/train.py"),
    ]:
        digest = f"results/code/{script}.sha256"
        assert digest in jobs[rule][0]["input"], (rule, jobs[rule][0]["input"])
        listed = dict(
            reversed(line.split("  ", 1)) for line in (work / digest).read_text().splitlines()
        )
        own = hashlib.sha256((REPO / module).read_bytes()).hexdigest()
        assert listed[module] == own, (rule, module)
    for rule, rule_jobs in jobs.items():
        assert not [f for j in rule_jobs for f in j["input"] if f.endswith(".py")], rule


def test_module_job_runs_the_workflows_own_ctseg(host):
    """A real job through the module, with a decoy ctseg first on the host's PYTHONPATH."""
    work, env = host
    proc = run(work, "results/raw/t2.manifest.json", env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (work / "results/raw/t2.manifest.json").is_file()
    assert not (work / "ctseg").exists() and not (work / "rules").exists()
