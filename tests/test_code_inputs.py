"""Every scripted rule lists, as `code` inputs, every ctseg file its script can import.

Snakemake reruns a job when an input changes; the library files a rule's script runs are such
inputs (rules/common.smk `code_of`). Here the import closure is computed independently, with the
standard library's modulefinder (bytecode, so imports inside functions count too), and compared
with the inputs Snakemake actually plans for each rule.
"""

from __future__ import annotations

import re
import subprocess
import sys
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


def missing_code_inputs(rule: str, script: str, inputs: list[Path]) -> set[Path]:
    """Files of the script's closure that a job of ``rule`` does not list as inputs."""
    return set(closure(script)) - {p.resolve() for p in inputs}


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
    data_only = [p for p in planned_inputs["metal"] if p.suffix != ".py"]
    missing = missing_code_inputs("metal", "metal", data_only)
    assert (REPO / "ctseg" / "metal.py").resolve() in missing
    assert missing == set(closure("metal"))
