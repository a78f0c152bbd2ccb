"""The case sheet, config accessors, input functions, resources and wildcard constraints.

Everything the rules need to wire files together lives here; rules compute nothing.
"""

import ast
import hashlib
import importlib
import math
import os
import re
import sys
from functools import cache, lru_cache
from pathlib import Path

import pandas as pd
import yaml
from jsonschema import Draft202012Validator
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The workflow's own folder, taken from this file's path rather than workflow.basedir, so that
# the paths stay right when the workflow is used as a module of another Snakefile (there
# workflow.basedir is the host's folder).
WORKFLOW_ROOT = Path(workflow.current_basedir).parent.resolve()


def _own_ctseg():
    """Make `import ctseg` resolve to this workflow's copy, at parse time and in every job.

    The library is not installed into the conda envs (whose content would then not identify
    the code they run); instead the workflow's root goes first on this process's sys.path and
    on the jobs' PYTHONPATH. Conda jobs, for which Snakemake drops PYTHONPATH, still find it:
    the script preamble appends this process's sys.path and the env holds no other ctseg.
    """
    root = str(WORKFLOW_ROOT)
    loaded = sys.modules.get("ctseg")
    if (
        loaded is not None
        and Path(loaded.__file__).resolve().parent.parent != WORKFLOW_ROOT
    ):
        raise WorkflowError(
            f"ctseg is already imported from {loaded.__file__}, not from this workflow's "
            f"{WORKFLOW_ROOT}; start snakemake from an environment without that ctseg"
        )
    if sys.path[:1] != [root]:
        sys.path[:] = [root] + [p for p in sys.path if p != root]
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ.update(
        PYTHONPATH=os.pathsep.join([root] + [p for p in paths if p != root]),
        CTSEG_ROOT=root,
    )


def own_module(name):
    """A ctseg module imported from this workflow's folder, never from another install."""
    _own_ctseg()
    mod = importlib.import_module(name)
    if not Path(mod.__file__).resolve().is_relative_to(WORKFLOW_ROOT):
        raise WorkflowError(
            f"{name} resolved to {mod.__file__}, outside {WORKFLOW_ROOT}"
        )
    return mod


# Snakemake checks each job's script through its source cache, which parses the script's path
# with smart_open's parse_uri three times per job; smart_open (7.x to 9.x) builds a new
# namedtuple class on every call: 71 us each, 15 s of the 132 s that 10,000 cases took to plan.
# The parse of a string is a pure function of it (and of HOME, fixed for the process), and its
# result an immutable tuple, so it is memoised, process-wide and once; the result is the same
# object type with the same fields (tests/test_scale.py compares it with smart_open's own).
def _memoise_uri_parsing():
    import smart_open

    if not getattr(smart_open.parse_uri, "_ctseg_memoised", False):
        memo = lru_cache(maxsize=4096)(smart_open.parse_uri)
        memo._ctseg_memoised = True
        smart_open.parse_uri = memo


_memoise_uri_parsing()


_own_ctseg()
ConfigError = own_module("ctseg.core.errors").ConfigError
_labels = own_module("ctseg.core.labels")
_config_module = own_module("ctseg.core.config")

validate(config, schema="../schemas/config.schema.yaml")

CASE_COLUMNS = ["case", "source", "location", "split"]
OPTIONAL_COLUMNS = [
    "sha256",
    "labels",
    "centroids",
    "label_map",
    "series_uid",
    "family",
]
SOURCES = {"phantom", "dicom", "nifti", "nrrd", "url"}
LIST_SUFFIXES = {".txt", ".csv", ".lst", ".list"}
CASE_SCHEMA = yaml.safe_load(
    (WORKFLOW_ROOT / "schemas" / "cases.schema.yaml").read_text()
)


def _relative(path):
    """Paths relative to the working directory, so a moved project does not look changed."""
    return os.path.relpath(path, os.getcwd())


def _resolve(path, base):
    """Case-sheet paths are relative to the sheet's own folder."""
    if not path or re.match(r"^[a-z]+://", path):
        return path
    p = Path(path).expanduser()
    return _relative(p if p.is_absolute() else (base / p))


def _row_problems(row, label_maps):
    """Every reason one case-sheet row (paths already resolved) cannot run; [] when it can."""
    problems = []
    for err in sorted(Draft202012Validator(CASE_SCHEMA).iter_errors(row), key=str):
        where = ".".join(str(p) for p in err.absolute_path) or "row"
        problems.append(f"{where}: {err.message}")
    if problems:
        return problems
    src = row["source"]
    if src == "dicom" and not Path(row["location"]).exists():
        problems.append(
            f"location: DICOM folder or file {row['location']} does not exist"
        )
    if src in ("nifti", "nrrd") and not Path(row["location"]).is_file():
        problems.append(f"location: {src} file {row['location']} does not exist")
    for col in ("labels", "centroids"):
        if row[col] and not Path(row[col]).is_file():
            problems.append(f"{col}: file {row[col]} does not exist")
    if (
        row["split"] == "test"
        and src != "phantom"
        and not (row["labels"] or row["centroids"])
    ):
        problems.append(
            "split: a test case needs labels or centroids to be scored; "
            "use split 'predict' to segment it without scoring"
        )
    if row["label_map"]:
        try:
            _labels.resolve_label_map(row["label_map"], label_maps)
        except KeyError as exc:
            problems.append(f"label_map: {exc.args[0]}")
    return problems


def load_case_sheet(path, label_maps=None, exclude=()):
    """Read and check the case sheet as a whole, before any job runs.

    A bad row (unknown source, a local file that is missing, an unknown label_map, ...) fails
    the run with one error that lists every bad row, so that one edit fixes them all; rows the
    config's `exclude_cases` names are dropped first and never checked.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"case sheet {path} does not exist (config key 'cases')")
    if path.suffix.lower() in LIST_SUFFIXES:
        sheet = pd.DataFrame(own_module("ctseg.ingest.volume").read_case_list(path))
    else:
        sheet = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, comment="#"
        )
    sheet.columns = [str(c).strip() for c in sheet.columns]
    missing = [c for c in CASE_COLUMNS if c not in sheet.columns]
    if missing:
        raise ConfigError(
            f"case sheet {path}: missing column(s) {', '.join(missing)}; "
            f"required: {', '.join(CASE_COLUMNS)}"
        )
    unknown = [c for c in sheet.columns if c not in CASE_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise ConfigError(
            f"case sheet {path}: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(CASE_COLUMNS + OPTIONAL_COLUMNS)}"
        )
    if sheet.empty:
        raise ConfigError(f"case sheet {path} has a header but no cases")
    for col in OPTIONAL_COLUMNS:
        if col not in sheet.columns:
            sheet[col] = ""
    sheet = sheet.fillna("").astype(str)
    sheet = sheet[~sheet["case"].isin(set(exclude))]
    if sheet.empty:
        raise ConfigError(f"case sheet {path}: every case is in exclude_cases")
    base = path.resolve().parent
    for col in ("location", "labels", "centroids"):
        sheet[col] = [
            v if col == "location" and src in ("phantom", "url") else _resolve(v, base)
            for v, src in zip(sheet[col], sheet["source"])
        ]
    bad = []
    dupes = sorted(set(sheet["case"][sheet["case"].duplicated()]))
    bad += [f"case {c!r}: duplicate case id" for c in dupes]
    for row in sheet.to_dict("records"):
        for problem in _row_problems(row, label_maps or {}):
            bad.append(f"case {row['case']!r}: {problem}")
    if bad:
        raise ConfigError(
            f"case sheet {path}: {len(bad)} problem(s); fix these rows, or list their cases "
            "in config exclude_cases to run the others:\n  " + "\n  ".join(bad)
        )
    return sheet.set_index("case", drop=False)


EXCLUDED = {str(k): str(v) for k, v in (config.get("exclude_cases") or {}).items()}
CASES = load_case_sheet(config["cases"], config.get("label_maps", {}), EXCLUDED)
CASE_IDS = list(CASES.index)
ROWS = {row["case"]: row for row in CASES.to_dict("records")}
SPLITS = {
    s: [c for c in CASE_IDS if ROWS[c]["split"] == s]
    for s in ("train", "val", "test", "predict")
}
VIEWS = {v["name"]: v for v in config["drr"]["views"]}
EXPERIMENTS = config.get("experiments", {})
CUBES = config.get("cubes", {})
RES = config.get("resources", {})
DEFAULT_RES = RES.get("default", {"mem_mb": 2000, "runtime": 30})
TRAIN_RES = RES.get("train", {"gpu": 0, "mem_mb": 8000, "runtime": 120, "threads": 2})
# Case ids as schemas/cases.schema.yaml defines them, as a wildcard constraint: a pattern rather than
# an alternation of every id, whose matching cost grows with the cohort (quadratic DAG build).
CASE_ID_PATTERN = CASE_SCHEMA["properties"]["case"]["pattern"].strip("^$")


def _alternation(names):
    return (
        "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"
    )


# ---------------------------------------------------------------- resources
# Memory and time grow with the scan: a job's estimate is a base plus a factor times the size
# of its input files (a folder counts every file below it), measured with the rules'
# `benchmark:` files (tests/test_resources.py checks the estimate against measured peak RSS).
# Both are multiplied by `attempt`, so that `--retries` (profiles: 2) resubmits a job that ran
# out of memory or time with twice, then three times, as much. Sizes are read when the job is
# ready to run, after its inputs exist.
USE_GPU = bool(config.get("use_gpu", False))
# MB of peak memory per MB of input, above the base (resources.default.mem_mb, which covers the
# interpreter and libraries, about 200 MB). Measured on a 300 x 256 x 256 uncompressed series
# (39.6 MB): dicom_summary peaked at 485 MB (the int16 volume and its float64 copy), to_volume at
# 311 MB. JPEG-compressed series unpack to several times their size: retries then double it.
# gzip'd NIfTI inputs unpack to several times their size on disk as well.
STATS_MEM_PER_MB = 8.0
VOLUME_MEM_PER_MB = 4.0
NIFTI_MEM_PER_MB = 30.0


def _input_mb(input):
    """MB of a job's data inputs (its `code` inputs, the library's sources, do not count)."""
    code = getattr(input, "code", [])
    code = {code} if isinstance(code, str) else set(code)
    total = 0
    for f in (f for f in input if f not in code):
        if os.path.isdir(f):
            for dirpath, _, names in os.walk(f):
                total += sum(os.path.getsize(os.path.join(dirpath, n)) for n in names)
        elif os.path.exists(f):
            total += os.path.getsize(f)
    return total / 1e6


def mem_mb(per_input_mb=0.0, base=None):
    """mem_mb callable: (base + per_input_mb x input MB) x attempt; base from resources.default."""
    base = DEFAULT_RES.get("mem_mb", 2000) if base is None else base

    def estimate(wildcards, input, attempt):
        return int(math.ceil((base + per_input_mb * _input_mb(input)) * attempt))

    return estimate


def runtime(per_input_mb=0.0, base=None):
    """runtime (minutes) callable: (base + per_input_mb x input MB) x attempt."""
    base = DEFAULT_RES.get("runtime", 30) if base is None else base

    def estimate(wildcards, input, attempt):
        return int(math.ceil((base + per_input_mb * _input_mb(input)) * attempt))

    return estimate


def gpus_for(device, requested=0):
    """GPUs a job asks the scheduler for, following the device it is configured to use.

    `cpu` -> 0; `cuda` / `cuda:N` -> at least 1; `auto` -> 1 when config `use_gpu: true` (the
    one switch for a GPU partition), else what resources.train.gpu requests (0 by default).
    """
    device = str(device or "auto")
    if device == "cpu":
        return 0
    if device.startswith("cuda"):
        return max(1, int(requested))
    return max(int(requested), 1 if USE_GPU else 0)


def experiment_gpus(requested=0):
    def gpus(wildcards):
        return gpus_for(
            EXPERIMENTS[wildcards.experiment].get("device", "auto"), requested
        )

    return gpus


# ---------------------------------------------------------------- library code as input
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


@cache
def _imported_modules(path):
    """ctseg modules a file imports (absolute, relative and function-level imports alike).

    Cached: the 17 scripts share most of the library, and each file is parsed once."""
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
    return frozenset(m for m in found if m.split(".")[0] == "ctseg")


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


CODE_DIGESTS = "results/code"


def _write_if_changed(path, text):
    """Replace a file atomically, and only when its content differs (its mtime is the signal)."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@cache
def code_of(script):
    """The library code a rule's script runs, as one input: editing any of it reruns the rule.

    The input is a digest of the script's import closure (`sha256sum` format, paths relative to
    the workflow's root, so `sha256sum -c` checks it from there), rewritten while the DAG is
    built when and only when a file's content changed. Listing the ~30 library files of every
    job instead made them nine in ten of the files a large DAG handles (issue 16: the
    10,000-case check). A touched but unchanged file reruns nothing."""
    path = WORKFLOW_ROOT / "scripts" / f"{script}.py"
    if not path.is_file():
        raise ValueError(f"code_of({script!r}): no script {path}")
    lines = []
    for f in import_closure(path.relative_to(WORKFLOW_ROOT)):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        lines.append(f"{digest}  {f.relative_to(WORKFLOW_ROOT).as_posix()}\n")
    target = f"{CODE_DIGESTS}/{script}.sha256"
    _write_if_changed(target, "".join(lines))
    return target


# ---------------------------------------------------------------- case accessors
def case_row(case):
    if case not in ROWS:
        raise ConfigError(f"case {case!r} is not in the case sheet {config['cases']}")
    return dict(ROWS[case])


def cases_in(split):
    return SPLITS[split]


def phantom_params(case):
    """This case's part of the phantom config (so that editing another case's entry reruns
    nothing here); ctseg.phantom.population.case_params turns it into the case's phantom.
    """
    cfg = config.get("phantom", {})
    implants = cfg.get("implants", {}).get(case)
    if "population" in cfg:
        family = ROWS[case]["family"]
        params = {"population": cfg["population"]}
        known = cfg.get("families") or {}
        if family:
            params["families"] = {family: known[family]} if family in known else {}
    else:
        params = {k: v for k, v in cfg.items() if k != "implants"}
    params["implants"] = list(implants or [])
    return params


def label_map_for(case):
    return _labels.resolve_label_map(
        case_row(case)["label_map"], config.get("label_maps", {})
    )


@cache
def files_under(path):
    """Every file below a folder (or the file itself), sorted; walked once per DAG build."""
    if not os.path.isdir(path):
        return (path,)
    found, todo = [], [path]
    while todo:
        with os.scandir(todo.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    todo.append(entry.path)
                elif entry.is_file():
                    found.append(entry.path)
    return tuple(sorted(found))


def fetch_inputs(wildcards):
    """Local source files of a case, so that editing one reruns that case's chain only."""
    row = case_row(wildcards.case)
    files = []
    if row["source"] == "dicom":
        files += files_under(row["location"])
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
    """Every cube is built from the training split (a cube names its recipe, not its cases)."""
    return cases_in("train")


def task_item(case, task):
    """What a volume task reads of a case: the CT and the task's truth only. Why: with every
    item key an input, the vertebra cube and the vertebra models' validation waited for all
    the metal jobs, and a metal setting retrained the vertebra models."""
    truth = own_module("ctseg.core.tasks").get_task(task).truth_key
    return {k: v for k, v in case_item(case).items() if k in ("case", "ct", truth)}


def cube_items(wildcards):
    task = CUBES[wildcards.cube]["task"]
    return [task_item(c, task) for c in cube_cases(wildcards.cube)]


def cube_inputs(wildcards):
    return _files_of(cube_items(wildcards))


def _is_drr(name):
    return EXPERIMENTS[name]["task"] == "bone_drr"


def _is_centroids(name):
    return EXPERIMENTS[name]["task"] == "centroids"


CENTROID_EXPERIMENTS = [n for n in EXPERIMENTS if _is_centroids(n)]
VOXEL_EXPERIMENTS = [n for n in EXPERIMENTS if not _is_centroids(n)]
_TRAINING_VOXELS = {
    n: _config_module.planned_training_voxels(EXPERIMENTS[n], CUBES)
    for n in EXPERIMENTS
}
#: the experiment whose training is longest (most voxels through the network), if any
LONGEST_TRAINING = max(
    (n for n in EXPERIMENTS if _TRAINING_VOXELS[n] > 0),
    key=_TRAINING_VOXELS.get,
    default=None,
)


def train_priority(wildcards):
    """Scheduling priority of an experiment's `dataset` and `train` jobs: 1 (as the centroid
    localiser's stages) for the localiser and for the longest training, so that on a few cores
    the longest job starts as soon as its cube exists instead of after the short ones
    (longest-processing-time-first; `ctseg.core.config.planned_training_voxels`); else 0.
    """
    name = wildcards.experiment
    return 1 if name == LONGEST_TRAINING or _is_centroids(name) else 0


def centroid_item(case):
    """A centroid-only training case: the CT and its centroids, never its label map."""
    return {
        "case": case,
        "ct": volume(case),
        "centroids": f"results/volumes/{case}/centroids.json",
    }


def train_data(wildcards):
    name = wildcards.experiment
    if _is_drr(name):
        return {"cases": [drr_item(c) for c in cases_in("train")]}
    if _is_centroids(name):
        return {"cases": [centroid_item(c) for c in cases_in("train")]}
    return {"cube": f"results/cubes/{EXPERIMENTS[name]['cube']}.h5"}


def localiser_stage_files(wildcards):
    """A centroid localiser's stage jobs (`train_stage`), which its `train` job packages; none
    for other experiments. The stages are independent trainings (first stages of the ensemble,
    refiner, region network), so on two cores two of them run side by side instead of one
    after another in a single job."""
    name = wildcards.experiment
    if not _is_centroids(name) or EXPERIMENTS[name].get("pretrained"):
        return []
    stages = _config_module.localiser_stages(EXPERIMENTS[name].get("localiser"))
    return [f"results/models/{name}/stages/{s}.json" for s in stages]


def val_data(wildcards):
    name = wildcards.experiment
    if _is_drr(name):
        return {"cases": [drr_item(c) for c in cases_in("val")]}
    if _is_centroids(name):
        return {"cases": [centroid_item(c) for c in cases_in("val")]}
    task = EXPERIMENTS[name]["task"]
    return {"cases": [task_item(c, task) for c in cases_in("val")]}


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


def prediction_path(experiment, case):
    if _is_centroids(experiment):
        return f"results/predictions/{experiment}/{case}.centroids.json"
    return f"results/predictions/{experiment}/{case}.nii.gz"


def truth_path(experiment, case):
    task = EXPERIMENTS[experiment]["task"]
    if task == "centroids":
        return f"results/volumes/{case}/centroids.json"
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
            "pred": prediction_path(exp, c),
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


def model_path(name):
    """The model an experiment applies: its own training's, or a package trained elsewhere
    (``pretrained``), in which case the DAG holds no cube or train job for it."""
    pre = EXPERIMENTS[name].get("pretrained")
    if pre:
        p = Path(pre).expanduser()
        return _relative(p if p.is_absolute() else Path(workflow.basedir) / p)
    return f"results/models/{name}/model.pt"


def model_input(wildcards):
    return model_path(wildcards.experiment)


def localiser_input(wildcards):
    """The centroid localiser that names a vertebra experiment's levels (identify_with)."""
    other = EXPERIMENTS[wildcards.experiment].get("identify_with")
    if not other:
        return {}
    if other not in EXPERIMENTS or not _is_centroids(other):
        raise ValueError(
            f"experiment {wildcards.experiment}: identify_with {other!r} is not a centroids experiment"
        )
    return {"localiser": model_path(other)}


def identify_input(wildcards):
    """The centroids that name a vertebra experiment's levels in `predict` (identify_with):
    its localiser's own scored prediction for the case, so the localiser runs once per case.
    """
    if not localiser_input(wildcards):  # which also checks what identify_with names
        return {}
    other = EXPERIMENTS[wildcards.experiment]["identify_with"]
    return {"centroids": f"results/predictions/{other}/{wildcards.case}.centroids.json"}


def segmented_cases():
    """Cases that get the standard outputs (labels, .seg.nrrd, centroids, statistics, QC):
    the test cases (QC next to the scores) and the unlabelled 'predict' cases."""
    return cases_in("test") + cases_in("predict")


def outputs_inputs(wildcards):
    return {
        "ct": volume(wildcards.case, "ct"),
        "prediction": f"results/predictions/{wildcards.experiment}/{wildcards.case}.nii.gz",
    }


def outputs_dicom(wildcards):
    """The raw DICOM folder the DICOM-SEG references, for DICOM (and phantom) cases."""
    if ROWS[wildcards.case]["source"] in ("dicom", "phantom"):
        return f"results/raw/{wildcards.case}/dicom"
    return ""


def all_outputs():
    out = [
        "results/report/summary.md",
        "results/stats/summary.tsv",
        "results/metal/summary.tsv",
    ]
    out += [f"results/raw/{c}.manifest.json" for c in CASE_IDS]
    out += [f"results/metal/{c}_qc.png" for c in CASE_IDS]
    out += [f"results/drr/{c}/{v}.png" for c in CASE_IDS for v in VIEWS]
    used_cubes = {
        e["cube"]
        for e in EXPERIMENTS.values()
        if e.get("cube") and not e.get("pretrained")
    }
    out += [f"results/cubes/{c}_qc.png" for c in sorted(used_cubes)]
    for name, exp in EXPERIMENTS.items():
        if not exp.get("pretrained"):
            out.append(f"results/models/{name}/loss.png")
        if exp["task"] != "centroids":  # voxel metrics
            out.append(f"results/report/{name}/dice_box.png")
        if exp["task"] == "vertebrae":
            out += [f"results/outputs/{name}/{c}/qc.json" for c in segmented_cases()]
        elif exp["task"] == "centroids":
            out += [prediction_path(name, c) for c in cases_in("predict")]
        elif exp["task"] == "metal":
            out += [
                f"results/predictions/{name}/{c}.nii.gz" for c in cases_in("predict")
            ]
        if exp["task"] in ("vertebrae", "centroids"):
            out.append(f"results/report/{name}/centroid_errors.png")
        if exp["task"] in ("vertebrae", "metal") and overlay_case(name):
            out.append(f"results/report/{name}/overlay.png")
    return out
