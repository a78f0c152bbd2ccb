"""The case sheet, config accessors, input functions and wildcard constraints.

Everything the rules need to wire files together lives here; rules compute nothing.
"""

import ast
import os
import re
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

from ctseg.core.labels import resolve_label_map

validate(config, schema="../schemas/config.schema.yaml")

CASE_COLUMNS = ["case", "source", "location", "split"]
OPTIONAL_COLUMNS = ["sha256", "labels", "centroids", "label_map", "series_uid"]
SOURCES = {"phantom", "dicom", "nifti", "nrrd", "url"}
LIST_SUFFIXES = {".txt", ".csv", ".lst", ".list"}


def _relative(path):
    """Paths relative to the working directory, so a moved project does not look changed."""
    return os.path.relpath(path, os.getcwd())


def _resolve(path, base):
    """Case-sheet paths are relative to the sheet's own folder."""
    if not path or re.match(r"^[a-z]+://", path):
        return path
    p = Path(path).expanduser()
    return _relative(p if p.is_absolute() else (base / p))


def load_case_sheet(path):
    """Read and check the case sheet; errors name the sheet and the case."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"case sheet {path} does not exist (config key 'cases')")
    if path.suffix.lower() in LIST_SUFFIXES:
        from ctseg.ingest.volume import read_case_list

        sheet = pd.DataFrame(read_case_list(path))
    else:
        sheet = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, comment="#"
        )
    sheet.columns = [c.strip() for c in sheet.columns]
    missing = [c for c in CASE_COLUMNS if c not in sheet.columns]
    if missing:
        raise ValueError(
            f"case sheet {path}: missing column(s) {', '.join(missing)}; "
            f"required: {', '.join(CASE_COLUMNS)}"
        )
    for col in OPTIONAL_COLUMNS:
        if col not in sheet.columns:
            sheet[col] = ""
    sheet = sheet.fillna("").astype(str)
    for _, row in sheet.iterrows():
        if row["source"] not in SOURCES:
            raise ValueError(
                f"case sheet {path}: case {row['case']!r} has unknown source "
                f"{row['source']!r}; choose from {', '.join(sorted(SOURCES))}"
            )
    dupes = sheet["case"][sheet["case"].duplicated()].tolist()
    if dupes:
        raise ValueError(f"case sheet {path}: duplicate case id(s) {', '.join(dupes)}")
    validate(sheet, schema="../schemas/cases.schema.yaml")
    base = path.resolve().parent
    for col in ("location", "labels", "centroids"):
        sheet[col] = [
            v if col == "location" and src in ("phantom", "url") else _resolve(v, base)
            for v, src in zip(sheet[col], sheet["source"])
        ]
    return sheet.set_index("case", drop=False)


CASES = load_case_sheet(config["cases"])
CASE_IDS = list(CASES.index)
VIEWS = {v["name"]: v for v in config["drr"]["views"]}
EXPERIMENTS = config.get("experiments", {})
CUBES = config.get("cubes", {})
RES = config.get("resources", {})
DEFAULT_RES = RES.get("default", {"mem_mb": 2000, "runtime": 30})
TRAIN_RES = RES.get("train", {"gpu": 0, "mem_mb": 8000, "runtime": 120, "threads": 2})


def _alternation(names):
    return (
        "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"
    )


# ---------------------------------------------------------------- library code as input
# The workflow's own folder, taken from this file's path rather than workflow.basedir, so that
# the paths stay right when the workflow is used as a module of another Snakefile.
WORKFLOW_ROOT = Path(workflow.current_basedir).parent


def _module_file(module):
    """The source file of a ctseg module name ('ctseg.drr.render'), or None if not ctseg's."""
    parts = module.split(".")
    if parts[0] != "ctseg":
        return None
    base = WORKFLOW_ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported_modules(path):
    """ctseg modules a file imports (absolute, relative and function-level imports alike)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = path.relative_to(WORKFLOW_ROOT).with_suffix("").parts
    package = here[:-1] if here[-1] != "__init__" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ((node.module,) if node.module else ()))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "ctseg"}


def import_closure(script):
    """Every ctseg source file that a script reaches through its imports, parents included."""
    todo, seen = [WORKFLOW_ROOT / script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for mod in _imported_modules(path):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):
                f = _module_file(".".join(parts[:i]))
                if f is not None and f not in seen:
                    todo.append(f)
    return sorted(p for p in seen if p.relative_to(WORKFLOW_ROOT).parts[0] == "ctseg")


def code_of(script):
    """The library files a rule's script runs, as inputs: editing any of them reruns the rule."""
    path = WORKFLOW_ROOT / "scripts" / f"{script}.py"
    if not path.is_file():
        raise ValueError(f"code_of({script!r}): no script {path}")
    return [_relative(p) for p in import_closure(path.relative_to(WORKFLOW_ROOT))]


# ---------------------------------------------------------------- case accessors
def case_row(case):
    return {k: str(v) for k, v in CASES.loc[case].items()}


def cases_in(split):
    return [c for c in CASE_IDS if CASES.loc[c, "split"] == split]


def phantom_params(case):
    params = {k: v for k, v in config.get("phantom", {}).items() if k != "implants"}
    params["implants"] = list(
        config.get("phantom", {}).get("implants", {}).get(case, [])
    )
    return params


def label_map_for(case):
    return resolve_label_map(CASES.loc[case, "label_map"], config.get("label_maps", {}))


def fetch_inputs(wildcards):
    """Local source files of a case, so that editing one reruns that case's chain only."""
    row = CASES.loc[wildcards.case]
    files = []
    if row["source"] == "dicom":
        folder = Path(row["location"])
        files += (
            sorted(str(p) for p in folder.rglob("*") if p.is_file())
            if folder.is_dir()
            else [str(folder)]
        )
    elif row["source"] in ("nifti", "nrrd"):
        files.append(row["location"])
    for col in ("labels", "centroids"):
        if row[col]:
            files.append(row[col])
    return files


def volume(case, name="ct"):
    return f"results/volumes/{case}/{name}.nii.gz"


def case_item(case):
    return {
        "case": case,
        "ct": volume(case),
        "labels": volume(case, "labels"),
        "metal": f"results/metal/{case}.nii.gz",
    }


def drr_item(case):
    return {
        "case": case,
        "drr": [f"results/drr/{case}/{v}.nii.gz" for v in VIEWS],
        "drr_labels": [f"results/drr/{case}/{v}_label.nii.gz" for v in VIEWS],
    }


def _files_of(items):
    out = []
    for item in items:
        for key, value in item.items():
            if key == "case":
                continue
            out += value if isinstance(value, list) else [value]
    return out


# ---------------------------------------------------------------- experiments
def experiment_cfg(name):
    return dict(EXPERIMENTS[name], name=name)


def cube_cases(cube):
    return cases_in("train")


def cube_items(wildcards):
    return [case_item(c) for c in cube_cases(wildcards.cube)]


def cube_inputs(wildcards):
    return _files_of(cube_items(wildcards))


def _is_drr(name):
    return EXPERIMENTS[name]["task"] == "bone_drr"


def train_data(wildcards):
    name = wildcards.experiment
    if _is_drr(name):
        return {"cases": [drr_item(c) for c in cases_in("train")]}
    return {"cube": f"results/cubes/{EXPERIMENTS[name]['cube']}.h5"}


def val_data(wildcards):
    name = wildcards.experiment
    item = drr_item if _is_drr(name) else case_item
    return {"cases": [item(c) for c in cases_in("val")]}


def train_inputs(wildcards):
    data = train_data(wildcards)
    files = [data["cube"]] if "cube" in data else _files_of(data["cases"])
    return files + _files_of(val_data(wildcards)["cases"])


def predict_data(wildcards):
    if _is_drr(wildcards.experiment):
        return {"drr": drr_item(wildcards.case)["drr"]}
    return {"ct": volume(wildcards.case)}


def predict_inputs(wildcards):
    return _files_of([predict_data(wildcards)])


def truth_path(experiment, case):
    task = EXPERIMENTS[experiment]["task"]
    if task == "bone_drr":
        return f"results/drr/{case}/labels_stack.nii.gz"
    if task == "metal":
        return f"results/metal/{case}.nii.gz"
    return volume(case, "labels")


def eval_pairs(wildcards):
    exp = wildcards.experiment
    return [
        {
            "case": c,
            "pred": f"results/predictions/{exp}/{c}.nii.gz",
            "truth": truth_path(exp, c),
        }
        for c in cases_in("test")
    ]


def eval_inputs(wildcards):
    return _files_of(eval_pairs(wildcards))


def overlay_case(experiment):
    tests = cases_in("test")
    return tests[0] if tests else None


def overlay_inputs(wildcards):
    exp = wildcards.experiment
    case = overlay_case(exp)
    return {
        "ct": volume(case),
        "truth": truth_path(exp, case),
        "pred": f"results/predictions/{exp}/{case}.nii.gz",
    }


def report_experiments():
    return {
        name: {
            "config": experiment_cfg(name),
            "summary": f"results/eval/{name}/summary.tsv",
            "metrics": f"results/eval/{name}/metrics.tsv",
            "centroids": f"results/eval/{name}/centroids.tsv",
        }
        for name in EXPERIMENTS
    }


def report_inputs(wildcards):
    files = ["results/stats/summary.tsv", "results/metal/summary.tsv"]
    for exp in report_experiments().values():
        files += [exp["summary"], exp["metrics"], exp["centroids"]]
    return files


def all_outputs():
    out = [
        "results/report/summary.md",
        "results/stats/summary.tsv",
        "results/metal/summary.tsv",
    ]
    out += [f"results/raw/{c}.manifest.json" for c in CASE_IDS]
    out += [f"results/metal/{c}_qc.png" for c in CASE_IDS]
    out += [f"results/drr/{c}/{v}.png" for c in CASE_IDS for v in VIEWS]
    used_cubes = {e["cube"] for e in EXPERIMENTS.values() if e.get("cube")}
    out += [f"results/cubes/{c}_qc.png" for c in sorted(used_cubes)]
    for name, exp in EXPERIMENTS.items():
        out += [
            f"results/models/{name}/loss.png",
            f"results/report/{name}/dice_box.png",
        ]
        if exp["task"] == "vertebrae":
            out.append(f"results/report/{name}/centroid_errors.png")
        if exp["task"] != "bone_drr" and overlay_case(name):
            out.append(f"results/report/{name}/overlay.png")
    return out
