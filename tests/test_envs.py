"""The conda environments in envs/: pinned like requirements.txt, complete for the rules using them.

`snakemake --sdm conda` runs each rule's script with the python of the env its `conda:` directive
names, so an env that lacks a package a rule's code imports fails only on a cluster, hours in.
These checks read the env files, the rules and the library's import statements instead.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
RULES = REPO / "rules"

# conda-forge package names that differ from the PyPI names used in requirements.txt.
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib", "simpleitk": "SimpleITK", "pytorch": "torch"}
# Names an env may carry without a requirements.txt pin: the interpreter and the installer.
NOT_IN_REQUIREMENTS = {"python", "pip"}


def norm(name: str) -> str:
    """PEP 503 normalised distribution name, so that SimpleITK == simpleitk, pylibjpeg_x == -x."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split_spec(spec: str) -> tuple[str, str]:
    """'numpy==2.4.6' -> ('numpy', '==2.4.6'); 'pyyaml' -> ('pyyaml', '')."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(.*?)\s*", spec)
    assert m, f"cannot parse requirement {spec!r}"
    return m.group(1), m.group(3).replace(" ", "")


@cache
def requirements() -> dict[str, str]:
    """requirements.txt as {normalised name: version spec ('' when unpinned)}."""
    out = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, spec = split_spec(line)
            out[norm(name)] = spec
    return out


def env_files() -> list[Path]:
    return sorted(ENVS.glob("*.yaml"))


def load_env(path: Path) -> tuple[dict, list[str], list[str]]:
    """(the parsed file, its conda dependencies, its pip dependencies)."""
    doc = yaml.safe_load(path.read_text())
    conda, pip = [], []
    for dep in doc.get("dependencies", []):
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"{path.name}: unexpected mapping {dep}"
            pip += [str(p) for p in dep["pip"]]
        else:
            conda.append(str(dep))
    return doc, conda, pip


def conda_name_version(spec: str) -> tuple[str, str]:
    """'numpy==2.4.6' -> ('numpy', '==2.4.6'); 'python=3.11' -> ('python', '=3.11')."""
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*((?:==|=|>=|<=|>|<|!=)?\s*[^\s]*)", spec.strip())
    assert m, f"cannot parse conda spec {spec!r}"
    return m.group(1), m.group(2).replace(" ", "")


def env_dists(path: Path) -> dict[str, str]:
    """Every package an env names, as {normalised PyPI name: version spec}."""
    _, conda, pip = load_env(path)
    out = {}
    for spec in conda:
        name, version = conda_name_version(spec)
        if name in NOT_IN_REQUIREMENTS:
            continue
        # conda's exact pin is ==X; a bare name is unpinned.
        assert version == "" or version.startswith("=="), (
            f"{path.name}: {spec!r} must be pinned exactly (==X.Y.Z) or left bare like requirements.txt"
        )
        out[norm(CONDA_TO_PYPI.get(name, name))] = version
    for spec in pip:
        if spec.startswith("-"):
            continue
        name, version = split_spec(spec)
        out[norm(name)] = version
    return out


# ------------------------------------------------------------------ the files themselves
def test_there_are_envs_and_each_parses():
    assert env_files(), "envs/*.yaml missing"
    for path in env_files():
        doc, conda, _ = load_env(path)
        assert doc["channels"][0] == "conda-forge", f"{path.name}: conda-forge must come first"
        assert "defaults" not in doc["channels"], f"{path.name}: the defaults channel is not free"
        assert conda, f"{path.name}: no dependencies"


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_has_python_311_and_pip(path):
    _, conda, _ = load_env(path)
    specs = dict(conda_name_version(s) for s in conda)
    assert specs.get("python") in ("=3.11", "==3.11"), f"{path.name}: python must be 3.11"
    assert "pip" in specs, f"{path.name}: pip is needed for its pip section"


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_pins_equal_requirements(path):
    req = requirements()
    named = env_dists(path)
    assert named, f"{path.name}: names no packages"
    for name, version in named.items():
        assert name in req, f"{path.name}: {name} is not in requirements.txt"
        assert version == req[name], (
            f"{path.name}: {name}{version or ' (unpinned)'} but requirements.txt has "
            f"{name}{req[name] or ' (unpinned)'}"
        )


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_torch_comes_from_pip_at_the_required_version(path):
    _, conda, pip = load_env(path)
    assert not any(conda_name_version(s)[0] in ("pytorch", "torch") for s in conda), (
        f"{path.name}: conda-forge pytorch versions differ from PyPI's; install torch with pip"
    )
    torch_specs = [s for s in pip if norm(split_spec(s)[0]) == "torch"] if pip else []
    for spec in torch_specs:
        assert split_spec(spec)[1] == requirements()["torch"], spec


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_does_not_install_ctseg(path):
    """An env is named by the hash of its file: were ctseg installed into it (``-e ${CTSEG_ROOT}``),
    an env built once in a shared --conda-prefix would run whichever checkout built it first.
    The envs hold third-party pins only; jobs import ctseg from the workflow's own folder."""
    _, conda, pip = load_env(path)
    names = {norm(conda_name_version(s)[0]) for s in conda}
    names |= {norm(split_spec(s)[0]) for s in pip if not s.startswith("-")}
    assert "ctseg" not in names, f"{path.name} installs ctseg"
    assert not [s for s in pip if s.startswith("-e") or "CTSEG_ROOT" in s], (
        f"{path.name}: installs a checkout; jobs import ctseg from the workflow's folder"
    )


def test_workflow_puts_its_own_root_on_the_jobs_path():
    """rules/common.smk prepends the workflow's folder to sys.path and to the jobs' PYTHONPATH
    (tests/test_module.py runs a job with a decoy ctseg on the host's PYTHONPATH)."""
    text = (RULES / "common.smk").read_text()
    assert "PYTHONPATH=os.pathsep.join([root]" in text
    assert "sys.path[:] = [root] + [p for p in sys.path if p != root]" in text


# ------------------------------------------------------------------ envs versus rules
def parse_rules() -> dict[str, dict[str, str]]:
    """{rule: {"conda": env path, "script": script path}} from rules/*.smk (paths resolved)."""
    rules: dict[str, dict[str, str]] = {}
    for smk in sorted(RULES.glob("*.smk")):
        current = None
        key = None
        for line in smk.read_text().splitlines():
            m = re.match(r"^(?:rule|checkpoint)\s+(\w+)\s*:", line)
            if m:
                current = rules.setdefault(m.group(1), {})
                key = None
                continue
            if current is None:
                continue
            m = re.match(r"^\s{4}(conda|script|shell|run|wrapper|notebook)\s*:\s*(.*)$", line)
            if m:
                key = m.group(1)
                current.setdefault("kind", key)
                inline = m.group(2).strip()
                if inline:
                    current[key] = inline.strip("'\"")
                    key = None
                continue
            if key and line.strip():
                current[key] = line.strip().rstrip(",").strip("'\"")
                key = None
    for spec in rules.values():
        for k in ("conda", "script"):
            if k in spec:
                spec[k] = str((RULES / spec[k]).resolve())
    return rules


def rules_or_skip() -> dict[str, dict[str, str]]:
    rules = parse_rules()
    if not rules:
        pytest.skip("no rules/*.smk yet")
    return rules


def test_every_scripted_rule_names_an_existing_env_and_every_env_is_used():
    rules = rules_or_skip()
    used = set()
    for name, spec in rules.items():
        if spec.get("kind") in ("script", "conda") or "script" in spec:
            assert "conda" in spec, f"rule {name} runs a script but has no conda: directive"
        if "conda" in spec:
            assert Path(spec["conda"]).is_file(), f"rule {name}: {spec['conda']} does not exist"
            used.add(Path(spec["conda"]).name)
    unused = {p.name for p in env_files()} - used
    assert not unused, f"envs not used by any rule: {sorted(unused)}"


def module_file(module: str) -> Path | None:
    """The file of a ctseg module ('ctseg.drr.render'), or None when it is not one."""
    parts = module.split(".")
    base = REPO.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imports_of(path: Path, package: str | None) -> set[str]:
    """Absolute module names a file imports, top-level or inside functions alike."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert package, f"relative import outside a package in {path}"
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from ctseg.drr import render` imports the submodule ctseg.drr.render
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def third_party_imports(script: Path) -> set[str]:
    """Top-level non-stdlib, non-ctseg modules that a script needs, following ctseg imports."""
    seen: set[Path] = set()
    todo: list[tuple[Path, str | None]] = [(script, None)]
    external: set[str] = set()
    while todo:
        path, package = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for mod in imports_of(path, package):
            top = mod.split(".")[0]
            if not top or top in sys.stdlib_module_names or top == "__future__":
                continue
            if top == "ctseg":
                # every enclosing package's __init__ runs too
                parts = mod.split(".")
                for i in range(1, len(parts) + 1):
                    f = module_file(".".join(parts[:i]))
                    if f is not None:
                        pkg = (
                            ".".join(parts[:i])
                            if f.name == "__init__.py"
                            else ".".join(parts[: i - 1])
                        )
                        todo.append((f, pkg))
                continue
            external.add(top)
    return external


@cache
def import_to_dists() -> dict[str, list[str]]:
    return md.packages_distributions()


def test_each_rule_env_provides_what_its_code_imports():
    rules = rules_or_skip()
    problems = []
    for name, spec in sorted(rules.items()):
        if "script" not in spec or "conda" not in spec:
            continue
        # named, not merely pulled in by another package, so that its version is pinned too
        provided = frozenset(env_dists(Path(spec["conda"])))
        for top in sorted(third_party_imports(Path(spec["script"]))):
            dists = {norm(d) for d in import_to_dists().get(top, [])}
            assert dists, f"rule {name} imports {top}, which no installed distribution provides"
            if not dists & provided:
                problems.append(f"rule {name} ({Path(spec['conda']).name}) imports {top} "
                                f"from {sorted(dists)}, which the env lacks")  # fmt: skip
    assert not problems, "\n".join(problems)


def test_import_scan_sees_known_dependencies():
    """The scanner itself: train's script reaches torch directly and h5py through ctseg.training.train."""
    script = REPO / "scripts" / "train.py"
    found = third_party_imports(script)
    assert {"torch", "h5py", "numpy"} <= found, found
    assert "ctseg" not in found and "pathlib" not in found
