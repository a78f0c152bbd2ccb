"""Model packages: a trained model with everything needed to apply it anywhere.

``model.pt`` is the package's core: the weights plus, as JSON strings, the *plan* (task, class
ids and VerSe names, working spacing and orientation, HU window, patch, dimensionality / slicing
axis, post-processing and TTA settings, training config and its hash, training and validation
case ids, validation figures, ctseg version, package format) and the experiment config. It holds
only tensors and strings, so it loads with ``torch.load(weights_only=True)``: a model file
cannot run code. ``ctseg export-model`` zips it with a readable ``plan.json`` and the run's
figures; ``ctseg import-model`` unpacks and verifies such an archive.

A package records its format version; a reader refuses a package of another major format with
a message saying what to do, instead of mis-reading its plan.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import torch

from ctseg import __version__
from ctseg.core.atomic import atomic_dir, atomic_path
from ctseg.core.errors import InputError
from ctseg.core.labels import VERSE_NAMES
from ctseg.models import build_model

#: Bump on any change of the plan's meaning; readers accept only their own format.
PACKAGE_FORMAT = 2
PLAN_KEYS = (
    "task",
    "dim",
    "n_classes",
    "class_ids",
    "spacing_mm",
    "patch",
    "hu_window",
    "model_kwargs",
)
#: Bounds on a plan's architecture: a crafted package must not make us allocate without limit.
LIMITS = {"n_classes": 256, "base_width": 512, "depth": 8}
ARCHIVE_MEMBERS = ("model.pt", "plan.json", "history.tsv", "summary.tsv")


def config_hash(experiment: dict) -> str:
    return hashlib.sha256(json.dumps(experiment, sort_keys=True, default=str).encode()).hexdigest()


def make_plan(meta: dict, experiment: dict, extra: dict | None = None) -> dict:
    """The plan stored in model.pt: ``meta`` (what prediction needs) plus provenance."""
    plan = dict(meta)
    plan.update(extra or {})
    plan["class_names"] = {str(c): VERSE_NAMES.get(c, str(c)) for c in meta["class_ids"] if c}
    plan["postprocess"] = bool(experiment.get("postprocess", True))
    plan["tta_flip"] = bool(experiment.get("tta_flip", False))
    plan["config_hash"] = config_hash(experiment)
    plan["ctseg_version"] = __version__
    plan["format"] = PACKAGE_FORMAT
    return plan


def save_package(path: Path, model: torch.nn.Module, experiment: dict, plan: dict) -> None:
    blob = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "experiment_json": json.dumps(experiment, sort_keys=True, default=str),
        "meta_json": json.dumps(plan, sort_keys=True),
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(blob, tmp)


def _model_file(path: Path) -> Path:
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise InputError(
            "model package not found (expected model.pt or a folder holding it)", path=path
        )
    return path


def read_plan(path: str | Path) -> tuple[dict, dict, dict]:
    """(state dict, plan, experiment) of a package, checked; InputError naming the file."""
    path = _model_file(Path(path))
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in first or "Unsupported global" in str(exc):
            first = "it holds objects other than tensors and plain data (refused: loading it could run code)"
        raise InputError(f"not a loadable ctseg model: {first}", path=path) from None
    if not isinstance(blob, dict) or not {"state_dict", "meta_json", "experiment_json"} <= set(
        blob
    ):
        raise InputError(
            "not a ctseg model package (missing state_dict / plan / experiment)", path=path
        )
    try:
        plan, experiment = json.loads(blob["meta_json"]), json.loads(blob["experiment_json"])
    except (TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"model plan is not valid JSON ({exc})", path=path) from None
    fmt = plan.get("format")
    if fmt != PACKAGE_FORMAT:
        raise InputError(
            f"model package format {fmt!r} (ctseg {plan.get('ctseg_version', 'before 0.1')}) is not "
            f"the format {PACKAGE_FORMAT} this ctseg {__version__} reads; retrain the model with "
            f"this version or use the ctseg version that wrote it",
            path=path,
        )
    missing = [k for k in PLAN_KEYS if k not in plan]
    if missing:
        raise InputError(f"model plan lacks {', '.join(missing)}", path=path)
    mk = plan["model_kwargs"]
    for key, bound in LIMITS.items():
        value = plan[key] if key == "n_classes" else mk.get(key, 0)
        if not isinstance(value, int) or value > bound or value < 0:
            raise InputError(
                f"model plan {key}={value!r} outside the supported range (<= {bound})", path=path
            )
    if len(plan["class_ids"]) != plan["n_classes"]:
        raise InputError("model plan: class_ids and n_classes disagree", path=path)
    return blob["state_dict"], plan, experiment


def load_package(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on ``device``, plan with the experiment under "experiment")."""
    state, plan, experiment = read_plan(path)
    model = build_model({**experiment, **plan["model_kwargs"]}, int(plan["n_classes"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(
            f"weights do not fit the planned network: {str(exc).splitlines()[0]}",
            path=_model_file(Path(path)),
        ) from None
    model.to(device).eval()
    plan["experiment"] = experiment
    return model, plan


def export_package(model_dir: Path, out_zip: Path, *, summary: Path | None = None) -> Path:
    """Zip ``model_dir``'s model.pt (checked), a readable plan.json, history.tsv and, when
    given, the evaluation summary into ``out_zip``."""
    model_pt = _model_file(Path(model_dir))
    _, plan, experiment = read_plan(model_pt)
    with atomic_path(Path(out_zip)) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(model_pt, "model.pt")
        z.writestr(
            "plan.json",
            json.dumps({"plan": plan, "experiment": experiment}, indent=2, sort_keys=True),
        )
        history = model_pt.parent / "history.tsv"
        if history.is_file():
            z.write(history, "history.tsv")
        if summary is not None:
            z.write(summary, "summary.tsv")
    return Path(out_zip)


def import_package(archive: Path, out_dir: Path, *, max_bytes: int = 4 << 30) -> Path:
    """Unpack an exported package into ``out_dir`` after checking its members and sizes, then
    verify that its model loads; returns the path of model.pt."""
    archive = Path(archive)
    try:
        z = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"not a model package archive ({exc})", path=archive) from None
    with z:
        names = z.namelist()
        unknown = [n for n in names if n not in ARCHIVE_MEMBERS]
        if unknown or "model.pt" not in names:
            raise InputError(
                f"unexpected package members {unknown or ['(no model.pt)']}; expected {', '.join(ARCHIVE_MEMBERS)}",
                path=archive,
            )
        if sum(i.file_size for i in z.infolist()) > max_bytes:
            raise InputError(f"package unpacks to more than {max_bytes} bytes", path=archive)
        with atomic_dir(Path(out_dir)) as tmp:
            for n in names:
                (tmp / n).write_bytes(z.read(n))
            read_plan(tmp / "model.pt")
    return Path(out_dir) / "model.pt"
