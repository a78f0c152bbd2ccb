"""Installing ctseg: package metadata, the exact lock, the Makefile's torch choice, benchmarks' peers.

`pip install .` must give a `ctseg` that imports: pyproject.toml declares a compatible range for
every third-party package the library imports, and requirements.txt (the exact lock that `make`
installs) satisfies those ranges.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def declared() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return {norm(r.name): r for r in reqs}


def lock(path: Path = REPO / "requirements.txt") -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            out[norm(name)] = version
    return out


def third_party_imports(folder: Path) -> dict[str, set[str]]:
    """{top-level module: files importing it} for every non-stdlib, non-relative import."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("ctseg", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


@pytest.fixture(scope="module")
def built_metadata(tmp_path_factory) -> dict:
    """The core metadata pip builds from this checkout (what `pip install .` would install)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--quiet",
         "--no-build-isolation", "--report", "-", str(REPO)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PIP_NO_INDEX": "1"},
        cwd=tmp_path_factory.mktemp("pip"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)["install"][0]["metadata"]


def test_metadata_declares_every_package_the_library_imports(built_metadata):
    from ctseg import __version__

    assert built_metadata["name"] == "ctseg" and built_metadata["version"] == __version__
    deps = {
        norm(r.name): r
        for r in map(Requirement, built_metadata["requires_dist"])
        if r.marker is None
    }
    assert deps == declared()
    dists = md.packages_distributions()
    imports = third_party_imports(REPO / "ctseg")
    assert {"numpy", "torch", "SimpleITK", "pydicom"} <= set(imports), sorted(imports)
    missing = []
    for top, files in sorted(imports.items()):
        names = {norm(d) for d in dists.get(top, [])}
        assert names, f"{top} (imported by {sorted(files)[0]}) is provided by no installed package"
        if not names & set(deps):
            missing.append(f"{top} ({sorted(names)}), imported by {sorted(files)[0]}")
    assert not missing, "pyproject.toml dependencies lack:\n" + "\n".join(missing)


def test_every_dependency_is_a_range_that_the_lock_satisfies():
    pins = lock()
    for name, req in declared().items():
        assert name in pins, f"{name} is declared but not locked in requirements.txt"
        spec = str(req.specifier)
        assert "<" in spec and ">=" in spec, f"{req}: give a compatible range, not a pin"
        assert req.specifier.contains(pins[name]), f"lock {name}=={pins[name]} is outside {req}"
    for extra, reqs in pyproject()["project"]["optional-dependencies"].items():
        for r in map(Requirement, reqs):
            assert r.specifier.contains(pins[norm(r.name)]), (extra, str(r))


def test_license_file_matches_pyproject():
    project = pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_ctseg_version():
    from ctseg import __version__

    proc = subprocess.run(
        [sys.executable, "-m", "ctseg.cli", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ctseg {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ctseg.__version__"}


def make_dry(*args: str) -> str:
    proc = subprocess.run(
        ["make", "-n", "-B", *args, ".venv/.ctseg-installed"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 or "TORCH=" in proc.stderr, proc.stderr
    return proc.stdout + proc.stderr


def test_makefile_torch_choice():
    pin = f'"torch=={lock()["torch"]}"'
    default = make_dry()
    assert "--index-url" not in default  # unchanged: pip's configured index
    cpu = make_dry("TORCH=cpu")
    assert f"--index-url https://download.pytorch.org/whl/cpu {pin}" in cpu
    assert cpu.index("whl/cpu") < cpu.index("-r requirements-dev.txt")
    assert f"--index-url https://pypi.org/simple {pin}" in make_dry("TORCH=cuda")
    assert "choose default, cpu or cuda" in make_dry("TORCH=gpu")


# ------------------------------------------------------------------ benchmarks' peers
def bench_peers() -> dict[str, set[str]]:
    """Modules imported by benchmarks/*.py (also inside functions), minus the library's own."""
    peers = third_party_imports(REPO / "benchmarks")
    runtime = set(third_party_imports(REPO / "ctseg"))
    return {m: f for m, f in peers.items() if m not in runtime}


def test_every_benchmark_peer_is_installed_by_a_requirements_file():
    dists = md.packages_distributions()
    listed = (
        set(lock(REPO / "requirements-bench.txt"))
        | set(lock())
        | set(lock(REPO / "requirements-dev.txt"))
    )
    for module in bench_peers():
        names = {norm(d) for d in dists.get(module, [])} or {norm(module)}
        assert names & listed, f"benchmark peer {module} is in no requirements file"


def test_every_benchmark_peer_imports_after_the_documented_install():
    bench = lock(REPO / "requirements-bench.txt")
    absent = [n for n in bench if importlib.util.find_spec(n.replace("-", "_")) is None]
    if absent:
        pytest.skip(
            "requirements-bench.txt is not installed here (pip install --no-deps -r "
            f"requirements-bench.txt); absent: {', '.join(absent)}"
        )
    modules = sorted(bench_peers()) + ["diffdrr.drr", "diffdrr.data", "nanodrr.drr"]
    failures = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            failures.append(f"{module}: {exc}")
    assert not failures, "\n".join(failures)
