"""Typed configuration: one dataclass per config section, one ``from_dict`` that rejects typos.

Defaults live here and nowhere else (rules, scripts and the CLI all build these objects), and an
unknown key is an error that names the key and the experiment, so ``epocs: 3`` can no longer be
silently ignored. ``schemas/config.schema.yaml`` lists the same keys; a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field

from ctseg.core.errors import ConfigError
from ctseg.core.normalise import METAL_HU
from ctseg.core.tasks import DEFAULT_VERTEBRAE, get_task

MODELS = ("unet2d", "unet3d", "resunet3d")
OPTIMIZERS = ("sgd", "adamw")
SLICE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
PREPROCESS = ("none", "global", "local")


#: package sub-network name of a localiser's k-th first stage (``first_stage_1``, ...)
LOCALISER_MEMBER = "first_stage_"


def localiser_stages(localiser: dict | None) -> list[str]:
    """The independent training runs of a centroid localiser (its ``localiser:`` block, raw or
    resolved), in training order: the ensemble's first stages ``first_stage_0`` ..
    ``first_stage_<K-1>`` (seeds ``seed + k``), then ``refiner`` and ``regions`` where
    configured. Each depends only on the cases, the recipe and its seed, so the workflow runs
    each as its own job, side by side. Here, without torch, because the DAG needs the names."""
    cfg = localiser or {}
    names = [f"{LOCALISER_MEMBER}{k}" for k in range(int(cfg.get("ensemble", 1)))]
    if cfg.get("refiner") not in (None, False):
        names.append("refiner")
        if cfg.get("regions") not in (None, False):
            names.append("regions")
    return names


def _coerce(value, tp, where: str):
    """``value`` checked against the annotation ``tp`` (int, float, bool, str, tuples, optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item, *rest) = typing.get_args(tp)
        return tuple(_coerce(v, item, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def check_keys(cls, d: dict, where: str, error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` naming every key of ``d`` that is not an init field of dataclass ``cls``."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise error(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(names))}"
        )


def _from_dict(cls, d: dict | None, where: str, aliases: dict[str, str] | None = None):
    d = dict(d or {})
    for old, new in (aliases or {}).items():
        if old in d:
            if new in d:
                raise ConfigError(f"{where}: give {new!r} or its alias {old!r}, not both")
            d[new] = d.pop(old)
    check_keys(cls, d, where)
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in d.items()}
    return cls(**kwargs)


def metal_fill_problem(value) -> str | None:
    """What is wrong with a metal fill value (an experiment's ``predict_metal_fill_hu``, a
    localiser's ``metal_fill_hu``), or None: null, or an HU number from air up to the metal
    threshold (a fill at or above it would still read as metal)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"an HU value or null, not {value!r}"
    if not -1000 <= value < METAL_HU:
        return f"an HU value in [-1000, {METAL_HU:g}) (below the metal threshold), not {value!r}"
    return None


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment of ``config.yaml``: a task, a network, its data and its optimisation."""

    name: str = ""
    task: str = "vertebrae"
    model: str = "unet3d"
    #: the cube (volume tasks) it trains on
    cube: str | None = None
    #: VerSe ids of the vertebra classes (default T1..L5)
    labels: tuple[int, ...] | None = None
    #: bone_drr pre-processing (seed 000)
    preprocess: str = "none"
    base_width: int = 16
    depth: int = 4
    norm: str = "instance"
    epochs: int = 20
    #: default 8 for 2D, 2 for 3D models
    batch_size: int | None = None
    #: default: one pass over the samples (8 slices per sample for 2D on cubes)
    steps_per_epoch: int | None = None
    optimizer: str = "sgd"
    #: default 0.01 for SGD, 1e-3 for AdamW
    lr: float | None = None
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_power: float = 0.9
    loss_weights: tuple[float, ...] = (0.5, 0.5)
    pos_slice_prob: float = 0.5
    slice_axis: str = "axial"
    threads: int | None = None
    val_every: int = 1
    num_workers: int = 0
    tta_flip: bool = False
    #: volume models: the grid prediction segments on (x, y, z mm), finer than the cube's
    #: within its scale augmentation (ctseg.inference.predict.inference_spacing); None: the
    #: cube's spacing
    predict_spacing_mm: tuple[float, ...] | None = None
    #: volume vertebra models named by centroids: the prediction grid scaled by the case's
    #: size estimated from its centroids (ctseg.inference.predict.inference_spacing)
    predict_size_adaptive: bool = False
    #: volume vertebra models named by centroids: the prediction grid times this factor when
    #: at least three of the case's centroids are cervical (ctseg.inference.predict.
    #: inference_spacing); None: no change
    predict_cervical_factor: float | None = None
    #: vertebra models: metal (>= 3000 HU) replaced by this HU before segmentation
    #: (ctseg.metal.fill_metal; 250: cancellous bone, which the screws sit in); None: the CT
    #: as it is
    predict_metal_fill_hu: float | None = None
    #: bf16 autocast for the training forward pass on a CPU with native bf16 (CUDA always
    #: uses it); other CPUs train in float32 (ctseg.training.precision)
    cpu_bf16: bool = False
    #: the network and its input batches in channels-last layout (ctseg.training.precision.
    #: to_channels_last): faster bf16 steps on some CPUs, the same values
    channels_last: bool = False
    postprocess: bool = True
    world_size: int | None = None
    dist_backend: str | None = None
    device: str = "auto"
    #: a model package trained elsewhere: the experiment is then applied, not trained
    pretrained: str | None = None
    #: vertebrae: a centroids experiment whose identified centroids name the levels
    identify_with: str | None = None
    #: vertebrae: "levels" (one class per level) or "foreground" (one vertebra class; the
    #: levels then come only from ``identify_with``'s centroids)
    classes: str = "levels"
    #: task centroids: the localiser's settings (ctseg.localisation.training.DEFAULTS)
    localiser: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict | None, name: str | None = None) -> ExperimentConfig:
        d = dict(d or {})
        if name is not None:
            d.setdefault("name", name)
        where = f"experiment {d.get('name') or '?'!s}"
        cfg = _from_dict(cls, d, where, aliases={"base_channels": "base_width"})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        where = f"experiment {self.name or '?'}"
        task = get_task(self.task, where=where)

        def bad(key, msg):
            raise ConfigError(f"{where}.{key}: {msg}")

        if self.model not in MODELS:
            bad("model", f"must be one of {', '.join(MODELS)}, not {self.model!r}")
        if self.dim not in task.dims:
            bad("model", f"{self.model} ({self.dim}D) does not fit task {self.task!r}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.slice_axis not in SLICE_AXES:
            bad("slice_axis", f"must be one of {', '.join(SLICE_AXES)}, not {self.slice_axis!r}")
        if self.preprocess not in PREPROCESS:
            bad("preprocess", f"must be one of {', '.join(PREPROCESS)}")
        if self.norm not in ("instance", "batch"):
            bad("norm", "must be instance or batch")
        if self.depth < 2:
            bad("depth", f"must be at least 2 (one pooling), got {self.depth}")
        for key in ("epochs", "base_width", "val_every"):
            if getattr(self, key) < 1:
                bad(key, "must be at least 1")
        for key in ("batch_size", "steps_per_epoch", "threads", "world_size"):
            v = getattr(self, key)
            if v is not None and v < 1:
                bad(key, "must be at least 1")
        if self.num_workers < 0:
            bad("num_workers", "must be >= 0")
        if self.lr is not None and self.lr <= 0:
            bad("lr", "must be > 0")
        if not 0.0 <= self.pos_slice_prob <= 1.0:
            bad("pos_slice_prob", "must lie in [0, 1]")
        if self.predict_spacing_mm is not None and (
            len(self.predict_spacing_mm) != 3 or min(self.predict_spacing_mm) <= 0
        ):
            bad("predict_spacing_mm", "three positive numbers (x, y, z mm)")
        if len(self.loss_weights) != 2:
            bad("loss_weights", "must be [dice, cross-entropy]")
        if self.predict_cervical_factor is not None and not 0 < self.predict_cervical_factor <= 2:
            bad("predict_cervical_factor", "a factor in (0, 2]")
        if (problem := metal_fill_problem(self.predict_metal_fill_hu)) is not None:
            bad("predict_metal_fill_hu", problem)
        if self.predict_metal_fill_hu is not None and not task.vertebrae:
            bad("predict_metal_fill_hu", f"applies to vertebra tasks, not {self.task!r}")
        if self.classes not in ("levels", "foreground"):
            bad("classes", f"must be levels or foreground, not {self.classes!r}")
        if self.classes == "foreground" and not task.vertebrae:
            bad("classes", f"foreground applies to vertebra tasks, not {self.task!r}")
        if self.classes == "foreground" and not (self.identify_with or self.pretrained):
            bad(
                "classes",
                "foreground needs identify_with (a centroids experiment names the levels)",
            )
        if self.labels is not None and (
            0 in self.labels or len(set(self.labels)) != len(self.labels)
        ):
            bad("labels", "must be distinct non-zero VerSe ids")

    # ------------------------------------------------------------------ derived settings
    @property
    def dim(self) -> int:
        return 2 if self.model == "unet2d" else 3

    @property
    def batch(self) -> int:
        return self.batch_size or (8 if self.dim == 2 else 2)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (0.01 if self.optimizer == "sgd" else 1e-3)

    @property
    def axis(self) -> int:
        """The [z, y, x] array axis a 2D model slices along."""
        return SLICE_AXES[self.slice_axis]

    @property
    def merge_foreground(self) -> bool:
        """Every labelled voxel is class 1 (vertebra foreground, metal, bone)."""
        return self.classes == "foreground"

    @property
    def class_ids(self) -> list[int]:
        """Label id of each class index: background first, then VerSe ids or 1."""
        if get_task(self.task).vertebrae and self.classes == "levels":
            return [0, *(self.labels or DEFAULT_VERTEBRAE)]
        return [0, 1]

    def model_kwargs(self) -> dict:
        """The architecture (stored in model.pt so the package rebuilds the same network)."""
        return {
            "model": self.model,
            "base_width": self.base_width,
            "depth": self.depth,
            "norm": self.norm,
        }

    def to_dict(self) -> dict:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def training_identity(self) -> dict:
        """The keys that change what training computes; how it is run (world size, loader
        workers, threads, device, name) does not: the plan fixes every random choice."""
        ignore = {"world_size", "dist_backend", "num_workers", "threads", "device", "name"}
        ignore |= {"localiser"}
        # inference-time settings
        ignore |= {"tta_flip", "postprocess", "predict_spacing_mm", "predict_size_adaptive"}
        ignore |= {"predict_cervical_factor", "predict_metal_fill_hu"}
        return {k: v for k, v in self.to_dict().items() if k not in ignore}


@dataclass(frozen=True)
class CubeRecipe:
    """One cube of ``config.yaml``: how training samples are resampled, cropped and augmented."""

    name: str = ""
    task: str = "vertebrae"
    spacing_mm: tuple[float, ...] = (4.0, 4.0, 4.0)
    #: x, y, z voxels of one sample
    patch: tuple[int, ...] = (64, 64, 64)
    copies: int = 0
    mode: str = "whole"
    fg_prob: float = 0.7
    #: probability of centring a crop on bone that is not foreground (ribs, pelvis, skull):
    #: the hard negatives a foreground-biased crop never shows (taken out of the uniform share)
    bone_neg_prob: float = 0.0
    bone_hu: float = 250.0
    hu_window: tuple[float, ...] = (-1000.0, 2000.0)
    augment: dict = field(default_factory=dict)
    centre_on_foreground: bool = False

    @classmethod
    def from_dict(cls, d: dict | None, name: str | None = None) -> CubeRecipe:
        d = dict(d or {})
        if name is not None:
            d.setdefault("name", name)
        where = f"cube {d.get('name') or '?'}"
        cfg = _from_dict(cls, d, where)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        where = f"cube {self.name or '?'}"
        task = get_task(self.task, where=where)
        if not task.uses_cube:
            raise ConfigError(f"{where}.task: task {self.task!r} does not train from cubes")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ConfigError(f"{where}.spacing_mm: three positive numbers")
        if len(self.patch) != 3 or min(self.patch) < 8:
            raise ConfigError(f"{where}.patch: three integers >= 8")
        if self.mode not in ("whole", "random"):
            raise ConfigError(f"{where}.mode: whole or random, not {self.mode!r}")
        if not 0.0 <= self.fg_prob <= 1.0:
            raise ConfigError(f"{where}.fg_prob: must lie in [0, 1]")
        if not 0.0 <= self.bone_neg_prob <= 1.0 - self.fg_prob:
            raise ConfigError(f"{where}.bone_neg_prob: must lie in [0, 1 - fg_prob]")
        if len(self.hu_window) != 2 or self.hu_window[0] >= self.hu_window[1]:
            raise ConfigError(f"{where}.hu_window: [low, high] with low < high")
        if self.copies < 0:
            raise ConfigError(f"{where}.copies: must be >= 0")

    def to_dict(self) -> dict:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def content_hash(self) -> str:
        d = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def planned_training_voxels(experiment: dict, cubes: dict) -> int:
    """Voxels the network's training forward passes will see: epochs x steps per epoch x batch
    x voxels per sample (the cube's patch, or one slice of it for a 2D model). 0 for an
    experiment that trains on no cube (DRR models, centroid localisers, ``pretrained``).

    Why: the workflow starts the longest training first (longest-processing-time-first). On
    two cores the default run's vert3d (2.5e8 voxels against vert2d's 1.6e7) began only after
    the localiser's stages and the small models, and ended the run 95 s after everything else
    (README, *What the default run gives*). Without ``steps_per_epoch`` an epoch counts as
    one step: the ranking then only sees epochs."""
    if experiment.get("pretrained") or not experiment.get("cube"):
        return 0
    recipe = cubes.get(experiment["cube"])
    if recipe is None:
        return 0
    exp = ExperimentConfig.from_dict({k: v for k, v in experiment.items() if k != "pretrained"})
    patch = [int(p) for p in CubeRecipe.from_dict(recipe).patch]  # x, y, z
    per_sample = math.prod(patch)
    if exp.dim == 2:
        per_sample //= patch[2 - exp.axis]  # SLICE_AXES index [z, y, x]; the patch is x, y, z
    return int(exp.epochs) * int(exp.steps_per_epoch or 1) * int(exp.batch) * per_sample
