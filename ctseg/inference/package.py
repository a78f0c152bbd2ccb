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
    if meta.get("classes") == "foreground":  # one vertebra class; levels from centroids
        plan["class_names"] = {"1": "vertebra"}
    plan["postprocess"] = bool(experiment.get("postprocess", True))
    plan["tta_flip"] = bool(experiment.get("tta_flip", False))
    # the forward pass's precision in training: inference on a bf16 CPU runs it alike
    plan["cpu_bf16"] = bool(experiment.get("cpu_bf16", False))
    if experiment.get("predict_spacing_mm"):
        plan["predict_spacing_mm"] = [float(s) for s in experiment["predict_spacing_mm"]]
    plan["predict_size_adaptive"] = bool(experiment.get("predict_size_adaptive", False))
    if experiment.get("predict_cervical_factor"):
        plan["predict_cervical_factor"] = float(experiment["predict_cervical_factor"])
    if experiment.get("predict_metal_fill_hu") is not None:
        plan["predict_metal_fill_hu"] = float(experiment["predict_metal_fill_hu"])
    plan["config_hash"] = config_hash(experiment)
    plan["ctseg_version"] = __version__
    plan["format"] = PACKAGE_FORMAT
    return plan


def save_package(
    path: Path,
    model: torch.nn.Module,
    experiment: dict,
    plan: dict,
    subnets: dict[str, torch.nn.Module] | None = None,
) -> None:
    """Write model.pt. ``subnets``: further networks of the same package (e.g. the
    localiser's fine refinement stage), stored in the one state dict under ``name.`` prefixes;
    ``plan["subnets"][name]`` must give each one's ``model_kwargs`` and ``n_classes``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name, net in (subnets or {}).items():
        if name not in (plan.get("subnets") or {}):
            raise ValueError(f"plan['subnets'] lacks the spec of sub-network {name!r}")
        state.update({f"{name}.{k}": v.detach().cpu() for k, v in net.state_dict().items()})
    blob = {
        "state_dict": state,
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

    def bad(why: str) -> InputError:
        return InputError(f"not a usable ctseg model file: {why}", path=path)

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message ends with advice to retry with weights_only=False: never pass it on
        found = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "global" in ln]
        detail = found[0].split(" was not")[0] if found else "disallowed content"
        detail = detail.replace("WeightsUnpickler error: ", "")
        raise bad(
            f"unsafe or foreign pickle refused ({detail}); loading it could run code"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise bad(f"cannot read it as a torch file ({first[:200]})") from None
    required = ("state_dict", "meta_json", "experiment_json")
    if not isinstance(blob, dict) or any(k not in blob for k in required):
        have = sorted(map(str, blob)) if isinstance(blob, dict) else type(blob).__name__
        raise bad(f"expected keys {list(required)}, found {have}")
    try:
        plan, experiment = json.loads(blob["meta_json"]), json.loads(blob["experiment_json"])
    except (TypeError, json.JSONDecodeError) as exc:
        raise bad(f"invalid metadata (not JSON: {exc})") from None
    if not isinstance(plan, dict) or not isinstance(experiment, dict):
        raise bad("invalid metadata (plan and experiment must be mappings)")
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
        raise bad(f"invalid metadata (plan lacks {', '.join(missing)})")
    mk = plan["model_kwargs"]
    for key, bound in LIMITS.items():
        value = plan[key] if key == "n_classes" else mk.get(key, 0)
        if not isinstance(value, int) or value > bound or value < 0:
            raise InputError(
                f"model plan {key}={value!r} outside the supported range (<= {bound})", path=path
            )
    if len(plan["class_ids"]) != plan["n_classes"]:
        raise bad("invalid metadata (class_ids and n_classes disagree)")
    return blob["state_dict"], plan, experiment


def _build_checked(spec: dict, n_classes: int, state, where: Path) -> torch.nn.Module:
    """The network ``spec`` describes, with ``state`` loaded; InputError when they differ."""
    try:
        with torch.device("meta"):  # the planned architecture, without allocating it
            probe = build_model(spec, int(n_classes))
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"model plan describes no buildable network ({exc})", path=where) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError("state_dict is not a mapping of tensors", path=where)
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in state.items()}
    if stored != expected:
        missing = sorted(set(expected) - set(stored))[:3]
        extra = sorted(set(stored) - set(expected))[:3]
        raise InputError(
            f"weights do not match the architecture in its metadata (missing {missing}, "
            f"unexpected {extra})",
            path=where,
        )
    del probe
    model = build_model(spec, int(n_classes))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(
            f"weights do not fit the planned network: {str(exc).splitlines()[0]}", path=where
        ) from None
    return model


def load_package(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on ``device``, plan with the experiment under "experiment"; the
    package's sub-networks, if any, built and on ``device`` under ``plan["subnet_modules"]``)."""
    state, plan, experiment = read_plan(path)
    where = _model_file(Path(path))
    subnets = plan.get("subnets") or {}
    if not isinstance(subnets, dict):
        raise InputError("invalid metadata (subnets must be a mapping)", path=where)
    modules = {}
    if isinstance(state, dict):
        state = dict(state)
        for name, spec in subnets.items():
            pre = f"{name}."
            sub = {k[len(pre) :]: state.pop(k) for k in list(state) if k.startswith(pre)}
            if not isinstance(spec, dict) or "model_kwargs" not in spec:
                raise InputError(f"invalid metadata (sub-network {name!r})", path=where)
            sub_model = _build_checked(spec["model_kwargs"], spec.get("n_classes", 1), sub, where)
            modules[name] = sub_model.to(device).eval()
    model = _build_checked({**experiment, **plan["model_kwargs"]}, plan["n_classes"], state, where)
    model.to(device).eval()
    plan["experiment"] = experiment
    plan["subnet_modules"] = modules
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
