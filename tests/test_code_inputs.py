"""Every scripted rule has, as its `code` input, a digest of every ctseg file its script imports.

Snakemake reruns a job when an input changes; a rule's `code` input is the digest of the library
files its script runs (rules/common.smk `code_of`: `results/code/<script>.sha256`, rewritten when
and only when a file's content changes). Here the import closure is computed independently, with
the standard library's modulefinder (bytecode, so imports inside functions count too), and
compared with the digest each planned job reads; each digest line is checked against the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from functools import cache
from modulefinder import ModuleFinder
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
TINY = REPO / "tests" / "configs" / "tiny.yaml"


def scripted_rules() -> dict[str, dict]:
    """{rule: {"script": name, "code": argument of code_of or None}} from rules/*.smk."""
    found = {}
    for smk in sorted(RULES.glob("*.smk")):
        for block in re.split(r"(?m)^(?=(?:rule|checkpoint) )", smk.read_text()):
            m = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if not m:
                continue
            script = re.search(r"(?m)^    script:\s*\n\s*\"\.\./scripts/(\w+)\.py\"", block)
            if not script:
                continue
            code = re.search(r"(?m)^        code=code_of\(\"(\w+)\"\),", block)
            found[m.group(1)] = {
                "script": script.group(1),
                "code": code.group(1) if code else None,
                "file": smk.name,
            }
    return found


@cache
def closure(script: str) -> frozenset[Path]:
    """ctseg source files reachable from scripts/<script>.py, by modulefinder (path = the repo
    only, so third-party and standard-library imports are left unresolved, and fast)."""
    finder = ModuleFinder(path=[str(REPO)])
    finder.run_script(str(REPO / "scripts" / f"{script}.py"))
    return frozenset(
        Path(mod.__file__).resolve()
        for name, mod in finder.modules.items()
        if name.split(".")[0] == "ctseg" and mod.__file__
    )


def digest_files(digest: Path) -> dict[Path, str]:
    """{file: sha256} that a `sha256sum`-format digest lists (paths relative to the repo)."""
    found = {}
    for line in digest.read_text().splitlines():
        sha, name = line.split("  ", 1)
        found[(REPO / name).resolve()] = sha
    return found


def missing_code_inputs(rule: str, script: str, inputs: list[Path]) -> set[Path]:
    """Files of the script's closure that no digest among a job's inputs covers, with the
    file's current content (a stale hash counts as missing)."""
    covered: dict[Path, str] = {}
    for p in inputs:
        if p.suffix == ".sha256" and p.parent.name == "code":
            covered.update(digest_files(p))
        elif p.suffix == ".py":
            covered[p.resolve()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return {
        f for f in closure(script) if covered.get(f) != hashlib.sha256(f.read_bytes()).hexdigest()
    }


@pytest.fixture(scope="module")
def planned_inputs(tmp_path_factory) -> dict[str, list[Path]]:
    """{rule: inputs of its first job} from a dry run of the tiny config in a fresh folder."""
    work = tmp_path_factory.mktemp("code")
    cfg = yaml.safe_load(TINY.read_text())
    (work / "cases.tsv").write_text((REPO / cfg["cases"]).read_text())
    cfg["cases"] = "cases.tsv"
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-n", "--cores", "1"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    inputs: dict[str, list[Path]] = {}
    rule = None
    for line in proc.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule = m.group(1)
        elif rule and line.startswith("    input: ") and rule not in inputs:
            names = line[len("    input: ") :].split(", ")
            inputs[rule] = [work / n.strip() for n in names]
    return inputs


def test_every_scripted_rule_has_code_of_its_own_script():
    rules = scripted_rules()
    assert len(rules) >= 17, sorted(rules)
    for name, spec in rules.items():
        assert spec["code"] is not None, (
            f"rule {name} ({spec['file']}) runs scripts/{spec['script']}.py but has no "
            f'code=code_of("{spec["script"]}") input'
        )
        assert spec["code"] == spec["script"], (name, spec)


def test_planned_code_inputs_cover_the_import_closure(planned_inputs):
    for name, spec in scripted_rules().items():
        assert name in planned_inputs, f"tiny dry run plans no job of rule {name}"
        missing = missing_code_inputs(name, spec["script"], planned_inputs[name])
        assert not missing, f"rule {name} misses code inputs {sorted(map(str, missing))}"


def test_closure_is_nontrivial_and_reaches_function_level_imports():
    """The reference walk itself: train reaches the inference and training packages."""
    files = {p.relative_to(REPO).as_posix() for p in closure("train")}
    assert {"ctseg/__init__.py", "ctseg/training/train.py", "ctseg/models.py"} <= files
    assert all(f.startswith("ctseg/") for f in files)


def test_a_rule_without_code_inputs_fails_the_check(planned_inputs):
    """A job that lists only its data inputs (no `code=`) is reported, file by file."""
    data_only = [p for p in planned_inputs["metal"] if p.suffix != ".sha256"]
    missing = missing_code_inputs("metal", "metal", data_only)
    assert (REPO / "ctseg" / "metal.py").resolve() in missing
    assert missing == set(closure("metal"))


def test_each_job_has_one_code_input_not_the_library_files(planned_inputs):
    """The digest stands for the closure: no job lists library files one by one (issue 16)."""
    for name, spec in scripted_rules().items():
        codes = [p for p in planned_inputs[name] if p.suffix == ".sha256"]
        assert [p.name for p in codes] == [f"{spec['script']}.sha256"], (name, codes)
        assert not [p for p in planned_inputs[name] if p.suffix == ".py"], name


def test_digest_is_rewritten_only_when_content_changes(tmp_path):
    """Parsing twice leaves the digest's mtime alone; a changed library file rewrites it, and
    only the digests of scripts that import that file."""
    import shutil

    workflow = tmp_path / "workflow"
    workflow.mkdir()
    for part in ["Snakefile", "rules", "scripts", "schemas", "envs", "ctseg", "config.yaml"]:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, workflow / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, workflow / part)
    work = tmp_path / "work"
    work.mkdir()
    cfg = yaml.safe_load(TINY.read_text())
    (work / "cases.tsv").write_text((REPO / cfg["cases"]).read_text())
    cfg["cases"] = "cases.tsv"
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    def parse() -> dict[str, tuple[float, str]]:
        proc = subprocess.run(
            [SNAKEMAKE, "-s", str(workflow / "Snakefile"), "-n", "--quiet", "--cores", "1"],
            cwd=work, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return {
            p.stem: (p.stat().st_mtime_ns, p.read_text())
            for p in (work / "results" / "code").glob("*.sha256")
        }

    first = parse()
    assert set(first) == {spec["script"] for spec in scripted_rules().values()}
    past = time.time() - 100
    for p in (work / "results" / "code").glob("*.sha256"):
        os.utime(p, (past, past))
    aged = parse()
    assert all(abs(aged[k][0] / 1e9 - past) < 1 for k in aged), "unchanged code rewrote a digest"
    metal = workflow / "ctseg" / "metal.py"
    metal.write_text(metal.read_text() + "\n# edited\n")
    after = parse()
    rewritten = {k for k in after if after[k][0] != aged[k][0]}
    importers = {s for s in after if "ctseg/metal.py" in after[s][1]}
    assert "metal" in rewritten and rewritten == importers
    assert "fetch" not in rewritten
    sha = hashlib.sha256(metal.read_bytes()).hexdigest()
    assert f"{sha}  ctseg/metal.py" in after["metal"][1]
