"""Training a centroid localiser from CTs and centroid lists alone (no label maps; seed 004).

Method (reasons in the README, "Centroid-only training"): one 3D U-Net
(:func:`ctseg.models.build_model`) sees the *whole* field of view at a coarse working spacing
(cut in-plane to the body). Its output head (``head``):

* ``detect_identify`` (default): seed 004's two stages in one network. Channel 0 is a sigmoid
  heatmap of *any* vertebra centroid (a Gaussian of ``sigma_mm`` around every centroid; the
  detection), channels 1.. a softmax over the levels, trained with cross entropy on the
  voxels within ``id_radius_mm`` of a centroid against that centroid's level (the
  identification), optionally each level weighted by how few training cases show it
  (``balance``; measured slower on the population, so 0 by default).
  Decoding multiplies the two (:func:`ctseg.localisation.predict.decode_centroids`).
* ``per_level``: one sigmoid heatmap per level (Payer et al.). On the phantom population,
  where a partial field of view shows 5-10 of 27 levels, these rare-positive maps collapsed to
  their prior; kept for packages trained with it.

Heatmap loss: binary cross entropy of the sigmoid output against the heatmap, each voxel
weighted ``1 + pos_weight * target`` and normalised by the weight sum -- a heatmap is ~0.1 %
foreground, unweighted the network learns "nothing anywhere" first; the heatmap bias starts
at a 1 % prior for the same reason.
Augmentation: random rotations (``rotate_prob``, ``rotate_deg``; targets recomputed from the
rotated centroids), random crops along the spine axis (partial fields of view,
``crop_prob``), random intensity scale.

The loop is :class:`LocaliserTrainer`, a small class with the hooks of the lead's planned
``ctseg.training.trainer.Trainer`` (setup, make_optimiser, train_step, validation_step,
end_of_epoch, save_checkpoint / load_checkpoint) so that it can become a subclass of it. It
uses the segmentation machinery directly: ``make_optimizer`` (AdamW / SGD + poly decay),
``experiment_hash`` (a checkpoint resumes only the same run), ``rng_states`` /
``restore_rng_states`` and ``load_checkpoint`` (``weights_only=True``), ``set_threads``,
``resolve_device`` (CUDA when present, bf16 autocast there) and ``save_model_pt`` (tensors +
JSON only; :func:`ctseg.inference.predict.load_model` reads it). All random choices come from
one ``torch.Generator`` seeded from ``seed``, so a resumed CPU run ends where an uninterrupted
one ends. Not done: DDP over several GPUs (one process trains).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

import ctseg.report.training as report_training
from ctseg.core.atomic import atomic_path
from ctseg.core.config import ExperimentConfig, localiser_stages, metal_fill_problem
from ctseg.core.device import resolve_device
from ctseg.core.errors import ConfigError, InputError
from ctseg.core.normalise import DEFAULT_HU_WINDOW
from ctseg.inference.package import make_plan, save_package
from ctseg.localisation.decode import resolve_levels
from ctseg.localisation.geometry import (
    crop_to_body,
    read_centroids,
    read_ct,
    to_working,
    working_array,
    world_to_index,
)
from ctseg.localisation.heatmaps import gaussian_heatmaps
from ctseg.localisation.identify import identification_scores, identification_table
from ctseg.localisation.predict import (
    HEADS,
    MEMBER,
    activate,
    decode_centroids,
    forward_logits,
    pad_zyx,
)
from ctseg.localisation.refine import RefinerTrainer, refiner_spec, resolve_refiner
from ctseg.localisation.regions import RegionTrainer, regions_spec, resolve_regions
from ctseg.localisation.synthetic import resolve_synthetic, synthetic_items
from ctseg.models import build_model, model_kwargs
from ctseg.training import history as shared
from ctseg.training.checkpoint import (
    experiment_hash,
    load_checkpoint,
    restore_rng_states,
    rng_states,
)
from ctseg.training.precision import (
    bf16_on_cpu,
    bf16_safe_depth,
    guarded_step,
    mixed_precision,
    require_bf16_safe_depth,
    to_channels_last,
)
from ctseg.training.trainer import make_optimizer, set_threads


def _optim_config(cfg: dict) -> ExperimentConfig:
    """The optimiser / thread keys of a localiser config as the shared typed config."""
    keys = ("optimizer", "lr", "momentum", "weight_decay", "poly_power", "threads")
    return ExperimentConfig.from_dict({k: cfg[k] for k in keys if cfg.get(k) is not None})


#: Defaults of every key :func:`train_localiser` reads (config overrides them).
DEFAULTS: dict = {
    "levels": "T1-L5",  # channels; add "T13" / "L6" for transitional anatomy
    "spacing_mm": [8.0, 8.0, 8.0],
    "hu_window": list(DEFAULT_HU_WINDOW),
    "sigma_mm": 8.0,
    "head": "detect_identify",  # or "per_level" (one sigmoid heatmap per level)
    "id_weight": 1.0,  # detect_identify: weight of the identification cross entropy
    "id_radius_mm": 24.0,  # detect_identify: voxels this close to a centroid learn its level
    "balance": 0.0,  # detect_identify: level weight (cases showing it)^-balance; 0 = none
    "model": "unet3d",
    "base_width": 8,
    "depth": 4,
    "norm": "instance",
    "optimizer": "adamw",
    "lr": 1e-2,
    "weight_decay": 3e-5,
    "epochs": 20,
    "steps_per_epoch": 20,
    "pos_weight": 100.0,
    "prior": 0.01,
    "crop_prob": 0.7,
    "rotate_prob": 0.5,
    "rotate_deg": 12.0,
    "min_crop_mm": 120.0,
    "intensity_jitter": 0.1,
    "threshold": 0.1,
    "min_distance_mm": 12.0,
    "refine": "gaussian",
    "consecutive_bonus": 0.25,
    "allow_skips": True,
    "skip_weight": 1.0,
    "optional_cost": 0.0,  # decoding: prior cost of each transitional level (T13, L6) used
    # prediction: metal (>= 3000 HU) replaced by this HU before the networks see the CT
    # (ctseg.metal.fill_metal); None: the CT as it is
    "metal_fill_hu": None,
    "val_every": 1,
    "cpu_bf16": False,  # bf16 autocast on CPUs with native bf16 (faster steps)
    "channels_last": False,  # every stage's network and batches channels-last (faster bf16)
    # first-stage networks trained with seeds seed, seed+1, ...; prediction averages their maps
    "ensemble": 1,
    # second stage on a fine grid (ctseg.localisation.refine): a mapping of its keys, or false
    "refiner": False,
    # anatomical anchors of each refined vertebra (ctseg.localisation.regions): mapping or false
    "regions": False,
    # extra training cases drawn from the phantom population (ctseg.localisation.synthetic)
    "synthetic": False,
}
#: Keys read only when heatmaps are decoded into centroids (prediction, validation figures).
DECODE_KEYS = (
    "threshold",
    "min_distance_mm",
    "refine",
    "consecutive_bonus",
    "allow_skips",
    "skip_weight",
    "optional_cost",
    "metal_fill_hu",
)
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_id_rate",
    "val_mean_error_mm",
    "val_false_positives",
    "lr",
    "seconds",
)


def resolve_config(config: dict | None) -> dict:
    """Config with defaults filled in; unknown keys raise ConfigError naming them."""
    config = dict(config or {})
    extra = {"threads", "task", "poly_power", "momentum"}
    unknown = sorted(set(config) - set(DEFAULTS) - extra)
    if unknown:
        raise ConfigError(f"unknown centroid-localiser key(s): {', '.join(unknown)}")
    out = {**DEFAULTS, **config}
    try:
        out["levels"] = resolve_levels(out["levels"])
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"config key 'levels': {exc}") from exc
    if len(out["spacing_mm"]) != 3 or min(float(s) for s in out["spacing_mm"]) <= 0:
        raise ConfigError(f"config key 'spacing_mm' must be 3 positive mm, got {out['spacing_mm']}")
    out["spacing_mm"] = [float(s) for s in out["spacing_mm"]]
    for key in ("sigma_mm", "min_distance_mm", "min_crop_mm"):
        if float(out[key]) <= 0:
            raise ConfigError(f"config key {key!r} must be > 0, got {out[key]}")
    if float(out["balance"]) < 0:
        raise ConfigError(f"config key 'balance' must be >= 0, got {out['balance']}")
    if not 0 <= float(out["crop_prob"]) <= 1:
        raise ConfigError(f"config key 'crop_prob' must be in [0, 1], got {out['crop_prob']}")
    if out["head"] not in HEADS:
        raise ConfigError(
            f"config key 'head' must be one of {', '.join(HEADS)}, got {out['head']!r}"
        )
    out["refiner"] = resolve_refiner(out["refiner"])
    if out["refiner"] is not None:
        out["refiner"]["hu_window"] = list(out["hu_window"])
        out["refiner"]["levels"] = list(out["levels"])
    out["regions"] = resolve_regions(out["regions"])
    if out["regions"] is not None:
        if out["refiner"] is None:
            raise ConfigError("config key 'regions' needs the refiner (its points are classified)")
        out["regions"]["hu_window"] = list(out["hu_window"])
        out["regions"]["levels"] = list(out["levels"])
    out["synthetic"] = resolve_synthetic(out["synthetic"])
    if (problem := metal_fill_problem(out["metal_fill_hu"])) is not None:
        raise ConfigError(f"config key 'metal_fill_hu' must be {problem}")
    for key in ("cpu_bf16", "channels_last"):
        if not isinstance(out[key], bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {out[key]!r}")
    if isinstance(out["ensemble"], bool) or not isinstance(out["ensemble"], int):
        raise ConfigError(f"config key 'ensemble' must be an integer, got {out['ensemble']!r}")
    if out["ensemble"] < 1:
        raise ConfigError(f"config key 'ensemble' must be >= 1, got {out['ensemble']}")
    out["task"] = "centroids"
    return out


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """BCE of sigmoid(logits) vs soft heatmap targets, voxel weight ``1 + pos_weight * target``,
    normalised by the summed weight (its minimum is at sigmoid(logits) == target)."""
    w = 1.0 + pos_weight * target
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (w * bce).sum() / w.sum()


def detect_identify_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    pos_weight: float,
    id_weight: float,
    id_floor: float,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss of the ``detect_identify`` head: :func:`weighted_bce` of channel 0 against the
    heatmap of *any* centroid (the per-level maximum), plus ``id_weight`` times the cross
    entropy of the softmax channels 1.. against the level of the nearest centroid, on voxels
    whose any-centroid heatmap exceeds ``id_floor``, each weighted by that heatmap value.

    ``target``: ``[B, L, z, y, x]`` per-level Gaussians. Why this split: 27 per-level sigmoid
    maps each see a positive in few cases (a partial field of view shows 5-10 levels) and
    measured on the population they collapsed to their prior; one detection map sees every
    vertebra of every case, and the identification softmax is a dense classification, so
    both get a signal from every step. ``class_weight`` (per level) rebalances levels that
    few training cases show (the ends of the spine, in partial fields of view).
    """
    det_t, idx = target.max(dim=1)
    loss = weighted_bce(logits[:, 0], det_t, pos_weight)
    w = det_t * (det_t > id_floor)
    if class_weight is not None:
        w = w * class_weight.to(w.device)[idx]
    if float(w.sum()) > 0:
        ce = F.cross_entropy(logits[:, 1:], idx, reduction="none")
        loss = loss + id_weight * (w * ce).sum() / w.sum()
    return loss


def level_weights(cases: list, power: float) -> torch.Tensor | None:
    """Per-level cross-entropy weights ``(n_cases_showing_level + 1) ** -power``, normalised
    to mean 1 over the levels seen: partial fields of view show the middle of the spine far
    more often than its ends, and unweighted the lower lumbar levels and the sacrum were
    never predicted (measured: every L3-S1 centroid called L1 or L2 after 1,200 steps)."""
    if power <= 0 or not cases:
        return None
    counts = np.sum([np.isfinite(c.points_zyx).all(axis=1) for c in cases], axis=0).astype(float)
    w = (counts + 1.0) ** -power
    w = w / w[counts > 0].mean() if (counts > 0).any() else w
    return torch.tensor(w, dtype=torch.float32)


def init_head_prior(model: torch.nn.Module, prior: float, channels: int | None = None) -> None:
    """Output bias so that sigmoid starts at ``prior`` (RetinaNet's prior init) on the first
    ``channels`` outputs (all by default; the others start at 0): the heatmaps are almost all
    background, and starting at 0.5 spends the first hundreds of steps only on pulling the
    background down."""
    head = getattr(model, "head", None)
    if head is None or getattr(head, "bias", None) is None:
        return
    with torch.no_grad():
        head.bias.zero_()
        head.bias[:channels].fill_(math.log(prior / (1.0 - prior)))


class Case:
    """One case on the working grid: normalised image, targets, truth (world) and geometry."""

    def __init__(self, item: dict, cfg: dict):
        self.name = str(item.get("case", "?"))
        ct = read_ct(item["ct"], self.name)
        if "centroids" not in item or item["centroids"] is None:
            raise InputError("no centroids given", case=self.name)
        self.truth = read_centroids(item["centroids"], self.name)
        levels = cfg["levels"]
        unknown = sorted({c["label"] for c in self.truth} - set(levels))
        if unknown:
            tqdm.write(f"case {self.name}: levels {unknown} are not trained; ignored")
        self.work = crop_to_body(to_working(ct, cfg["spacing_mm"]))
        self.image = working_array(self.work, cfg["hu_window"])
        by = {c["label"]: c for c in self.truth}
        pts = np.full((len(levels), 3), np.nan)
        for k, lab in enumerate(levels):
            if lab in by:
                pts[k] = world_to_index(self.work, by[lab]["world"])
        self.points_zyx = pts
        self.sigma_mm = float(cfg["sigma_mm"])

    @property
    def target(self) -> np.ndarray:
        """Per-level heatmaps ``[L, z, y, x]``, computed when asked (separable, a few ms): kept
        in memory for hundreds of synthetic cases they would take gigabytes."""
        sp_zyx = list(reversed(self.work.GetSpacing()))
        return gaussian_heatmaps(self.points_zyx, self.image.shape, sp_zyx, self.sigma_mm)


def rotation_zyx(angles_deg: list[float]) -> np.ndarray:
    """Rotation matrix in (z, y, x) mm space: rotations about the z, y and x axes."""
    az, ay, ax = np.deg2rad(angles_deg)
    rz = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rx = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotated(case: Case, angles_deg: list[float], sigma_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The case's image rotated about its centre (in mm, so anisotropic spacing is honoured;
    linear, air outside) and heatmaps of its rotated centroids (tilted scans and spines:
    a 10-degree tilt cost an unrotated model a fifth of its identifications)."""
    sp = np.array(list(reversed(case.work.GetSpacing())))
    shape = np.array(case.image.shape)
    rot = rotation_zyx(angles_deg)
    c = (shape - 1) / 2.0 * sp
    # output index o -> input index S^-1 (R (S o - c) + c)
    m = np.diag(1.0 / sp) @ rot @ np.diag(sp)
    offset = (c - rot @ c) / sp
    img = ndimage.affine_transform(case.image, m, offset, order=1, mode="constant", cval=0.0)
    pts = case.points_zyx
    out_pts = ((rot.T @ ((pts * sp) - c).T).T + c) / sp  # NaN rows stay NaN
    tgt = gaussian_heatmaps(out_pts, tuple(shape), sp, sigma_mm)
    return img.astype(np.float32), tgt


class LocaliserTrainer:
    """Training loop with Trainer-style hooks; :meth:`fit` runs it (see module docstring)."""

    def __init__(
        self,
        train_items: list[dict],
        val_items: list[dict],
        out_dir: str | Path,
        config: dict | None,
        seed: int,
        device: str = "auto",
        threads: int | None = None,
    ):
        self.cfg = resolve_config(config)
        self.train_items, self.val_items = list(train_items), list(val_items)
        self.out_dir = Path(out_dir)
        self.seed = int(seed)
        self.dev = resolve_device(device)
        self.threads = threads
        self.history: list[dict] = []
        self.start_epoch = 0
        # the first stage's mixed precision, shared by the refiner and the region network
        self.autocast = mixed_precision(self.dev, bool(self.cfg["cpu_bf16"]))
        self.channels_last = bool(self.cfg["channels_last"])  # and its layout

    # ------------------------------------------------------------------ hooks
    def setup(self) -> None:
        """Threads, seeds, data on the working grid, model, optimiser, resume."""
        set_threads(_optim_config(self.cfg), self.threads)
        torch.manual_seed(self.seed)
        np.random.seed(self.seed % 2**32)
        random.seed(self.seed)
        self.gen = torch.Generator().manual_seed(self.seed)
        if not self.train_items:
            raise InputError("no training cases", path=self.out_dir)
        self.train = [Case(it, self.cfg) for it in self.train_items]
        syn = self.cfg["synthetic"]
        if syn is not None and syn["cases"]:
            draws = synthetic_items(syn, self.seed, syn["cases"])
            self.train += [
                Case(it, self.cfg)
                for it in tqdm(draws, total=syn["cases"], desc="synthetic cases", unit="case")
            ]
        self.val = [Case(it, self.cfg) for it in self.val_items]
        self.levels = self.cfg["levels"]
        self.head = self.cfg["head"]
        self.class_weight = level_weights(self.train, float(self.cfg["balance"]))
        detect_identify = self.head == "detect_identify"
        self.model = build_model(self.cfg, len(self.levels) + int(detect_identify))
        init_head_prior(self.model, float(self.cfg["prior"]), 1 if detect_identify else None)
        self.model.to(self.dev)
        if self.channels_last:
            to_channels_last(self.model, 3)
        self.epochs = int(self.cfg["epochs"])
        self.steps = int(self.cfg["steps_per_epoch"])
        self.make_optimiser()
        # decoding settings do not change what is trained: a run whose only change is one of
        # them resumes its finished checkpoint and rewrites model.pt with the new decoding
        skip = ("threads", "refiner", "regions", "ensemble", *DECODE_KEYS)
        identity = {k: v for k, v in self.cfg.items() if k not in skip}
        shapes = [list(c.image.shape) for c in self.train]
        self.run_id = experiment_hash(identity, self.seed, {"cases": shapes})
        self.load_checkpoint()

    def make_optimiser(self) -> None:
        self.opt, self.sched = make_optimizer(
            _optim_config(self.cfg), self.model.parameters(), self.epochs * self.steps
        )

    def sample_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One training case (drawn from the plan generator), randomly rotated (targets
        recomputed from the rotated centroids, so they stay exact Gaussians), cropped along z
        and jittered in intensity, padded to the network divisor."""
        g = self.gen
        case = self.train[int(torch.randint(len(self.train), (1,), generator=g))]
        nz = case.image.shape[0]
        r = torch.rand(8, generator=g).tolist()
        max_deg = float(self.cfg["rotate_deg"])
        if max_deg > 0 and r[4] < float(self.cfg["rotate_prob"]):
            angles = [max_deg * (2 * a - 1) for a in r[5:8]]
            img, tgt = rotated(case, angles, float(self.cfg["sigma_mm"]))
        else:
            img, tgt = case.image, case.target
        if r[0] < float(self.cfg["crop_prob"]):
            sz = float(case.work.GetSpacing()[2])
            min_len = min(nz, max(self.model.divisor, int(round(self.cfg["min_crop_mm"] / sz))))
            length = min_len + int(r[1] * (nz - min_len + 1))
            length = min(length, nz)
            start = int(r[2] * (nz - length + 1))
            img, tgt = img[start : start + length], tgt[:, start : start + length]
        jit = float(self.cfg["intensity_jitter"])
        img = img * (1.0 + jit * (2 * r[3] - 1))
        # no level 2 voxels deep: oneDNN's bf16 weight gradient is not computed right there
        depth = bf16_safe_depth(img.shape[0], self.model.divisor)
        x = torch.from_numpy(pad_zyx(img, self.model.divisor, depth)[None, None].copy())
        y = torch.from_numpy(pad_zyx(tgt, self.model.divisor, depth)[None].copy())
        return x.to(self.dev), y.to(self.dev)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The head's loss of ``[B, C, ...]`` logits against ``[B, L, ...]`` level heatmaps."""
        pos_weight = float(self.cfg["pos_weight"])
        if self.head == "per_level":
            return weighted_bce(logits, target, pos_weight)
        floor = math.exp(
            -0.5 * (float(self.cfg["id_radius_mm"]) / float(self.cfg["sigma_mm"])) ** 2
        )
        return detect_identify_loss(
            logits, target, pos_weight, float(self.cfg["id_weight"]), floor, self.class_weight
        )

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        if self.channels_last:
            x = to_channels_last(x)
        with self.autocast():
            logits = self.model(x)
        loss = self.loss(logits.float(), y)
        guarded_step(self.model, self.opt, loss)
        self.sched.step()
        return float(loss.detach())

    @torch.no_grad()
    def validation_step(self) -> dict:
        """Whole-volume prediction of every validation case: loss, identification rate, mean
        localisation error and false positives over all of them."""
        if not self.val:
            return {
                "val_loss": math.nan,
                "val_id_rate": math.nan,
                "val_mean_error_mm": math.nan,
                "val_false_positives": math.nan,
            }
        losses, tables = [], []
        meta = self.meta()
        for c in self.val:
            logits = forward_logits(self.model, c.image, self.dev)
            losses.append(float(self.loss(logits[None], torch.from_numpy(c.target)[None])))
            heat = activate(logits, self.head)
            tables.append(identification_table(decode_centroids(heat, c.work, meta), c.truth))
        s = identification_scores(pd.concat(tables, ignore_index=True))
        return {
            "val_loss": float(np.mean(losses)),
            "val_id_rate": s["id_rate"],
            "val_mean_error_mm": s["mean_error_mm"],
            "val_false_positives": s["false_positives"],
        }

    def end_of_epoch(self, epoch: int, losses: list[float], t0: float) -> None:
        every = int(self.cfg["val_every"])
        if (epoch + 1) % every == 0 or epoch + 1 == self.epochs:
            val = self.validation_step()
        else:
            val = {k: math.nan for k in HISTORY_COLUMNS if k.startswith("val_")}
        self.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                **val,
                "lr": float(self.opt.param_groups[0]["lr"]),
                "seconds": time.perf_counter() - t0,
            }
        )
        h = self.history[-1]
        tqdm.write(
            f"epoch {epoch + 1}/{self.epochs} loss {h['train_loss']:.4f} "
            f"val_loss {h['val_loss']:.4f} id {h['val_id_rate']:.3f} "
            f"err {h['val_mean_error_mm']:.2f} mm"
        )
        self.save_checkpoint(epoch + 1)
        write_history(self.out_dir / "history.tsv", self.history)

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    def save_checkpoint(self, epoch: int) -> None:
        ck = {
            "run_id": self.run_id,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": rng_states(self.gen, self.dev),
            "epoch": epoch,
            "history": self.history,
        }
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(ck, tmp)

    def load_checkpoint(self) -> None:
        ck = load_checkpoint(self.ckpt_path)
        if ck is None or ck.get("run_id") != self.run_id:
            return
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        restore_rng_states(ck["rng"], self.gen, self.dev)
        self.history, self.start_epoch = list(ck["history"]), int(ck["epoch"])
        tqdm.write(f"resuming {self.out_dir.name} from epoch {self.start_epoch}")

    def meta(self) -> dict:
        """What prediction needs, stored in model.pt (read by
        :func:`ctseg.inference.predict.load_model` and :func:`predict_centroids`)."""
        keys = ("spacing_mm", "hu_window", "sigma_mm", *DECODE_KEYS, "head")
        ref = self.cfg["refiner"]
        n_classes = len(self.levels) + int(self.head == "detect_identify")
        extra: dict = {"subnets": {}}
        for k in range(1, int(self.cfg["ensemble"])):
            extra["subnets"][f"{MEMBER}{k}"] = {
                "model_kwargs": model_kwargs(self.cfg),
                "n_classes": n_classes,
            }
        if ref is not None:
            extra["refiner"] = refiner_spec(ref)
            extra["subnets"]["refiner"] = {
                "model_kwargs": model_kwargs(ref),
                "n_classes": 1 + len(self.levels) * int(bool(ref["identify"])),
            }
        reg = self.cfg["regions"]
        if reg is not None:
            extra["regions"] = regions_spec(reg)
            extra["subnets"]["regions"] = {
                "model_kwargs": model_kwargs(reg),
                "n_classes": len(reg["classes"]),
            }
        return {
            **extra,
            "task": "centroids",
            "dim": 3,
            # detect_identify: channel 0 (id 0) is the any-vertebra detection map
            "n_classes": n_classes,
            "class_ids": [0] * int(self.head == "detect_identify") + list(self.levels),
            "levels": list(self.levels),
            **{k: self.cfg[k] for k in keys},
            "model_kwargs": model_kwargs(self.cfg),
            "patch": [],  # the whole field of view in one pass
            "orientation": "LPS",
            "seed": self.seed,
            "epochs": self.epochs,
        }

    # ------------------------------------------------------------------ driver
    def stages(self) -> list[str]:
        """:func:`ctseg.core.config.localiser_stages` of this recipe."""
        return localiser_stages(self.cfg)

    def fit(self) -> Path:
        """Train every stage that is not finished (a finished one resumes at its last step and
        trains nothing), then write model.pt with all of them."""
        subnets: dict[str, torch.nn.Module] = {}
        for stage in self.stages():
            subnets.update(self.fit_stage(stage))
        path = self.out_dir / "model.pt"
        save_package(path, self.model, self.cfg, make_plan(self.meta(), self.cfg), subnets)
        return path

    def fit_stage(self, stage: str) -> dict[str, torch.nn.Module]:
        """Train one stage of :meth:`stages`; returns the sub-networks it adds to the package
        (none for the first first stage, which is the package's main network)."""
        if stage not in self.stages():
            raise ConfigError(f"localiser stage {stage!r}: not one of {', '.join(self.stages())}")
        if stage == f"{MEMBER}0":
            self.setup()
            self.model.train()
            for epoch in range(self.start_epoch, self.epochs):
                t0 = time.perf_counter()
                losses = [self.train_step(*self.sample_batch()) for _ in range(self.steps)]
                self.end_of_epoch(epoch, losses, t0)
            write_history(self.out_dir / "history.tsv", self.history)
            plot_history(self.out_dir / "loss.png", self.history, self.out_dir.name)
            return {}
        if stage.startswith(MEMBER):
            return {stage: self.fit_member(int(stage[len(MEMBER) :]))}
        set_threads(_optim_config(self.cfg), self.threads)
        syn = self.cfg["synthetic"]
        items = list(self.train_items)
        n = 0 if syn is None else syn[f"{stage}_cases"]
        if n:
            items += list(synthetic_items(syn, self.seed, n))
        trainer = RefinerTrainer if stage == "refiner" else RegionTrainer
        cfg = self.cfg[stage]
        sub = trainer(
            items, cfg, self.out_dir, self.seed, self.dev, self.autocast, self.channels_last
        )
        if bf16_on_cpu(self.dev, self.cfg["cpu_bf16"]):
            require_bf16_safe_depth(int(cfg["patch"]), sub.model.divisor, stage)
        return {stage: sub.fit()}

    def fit_member(self, k: int) -> torch.nn.Module:
        """The ensemble's k-th first stage (k >= 1): its own resumable run under
        ``out_dir/member<k>`` with seed ``seed + k`` (same cases, recipe and precision; no
        refiner or regions of its own). Why an ensemble: on held-out draws two first stages
        failed different families (crop_lower 22 % in one run, 94 % in another), and their
        averaged maps beat either (README, *Centroid-only training*)."""
        cfg = {**self.cfg, "refiner": False, "regions": False, "ensemble": 1}
        trainer = LocaliserTrainer(
            self.train_items, self.val_items, self.out_dir / f"member{k}", cfg,
            self.seed + k, str(self.dev), self.threads,
        )  # fmt: skip
        trainer.fit()
        return trainer.model.eval()


def write_history(path: Path, history: list[dict]) -> None:
    """history.tsv: one row per epoch, columns :data:`HISTORY_COLUMNS`."""
    shared.write_history(path, history, HISTORY_COLUMNS)


def plot_history(path: Path, history: list[dict], title: str) -> None:
    """Loss (train, validation) and validation identification rate per epoch."""
    report_training.plot_history(
        path, history, title, loss_label="weighted heatmap BCE",
        metric="val_id_rate", metric_label="validation identification rate",
    )  # fmt: skip


def train_localiser(
    train_items: list[dict],
    val_items: list[dict],
    out_dir: str | Path,
    config: dict | None,
    seed: int,
    device: str = "auto",
    threads: int | None = None,
    stage: str | None = None,
) -> Path | None:
    """Train a centroid localiser; writes ``out_dir/model.pt``, ``history.tsv``, ``loss.png``
    and ``checkpoints/last.pt`` (resumed on rerun). Items: ``{"case", "ct": path | sitk.Image,
    "centroids": path | [{"label", "world" | x, y, z}]}``. Returns the model.pt path.

    ``stage`` (one of :meth:`LocaliserTrainer.stages`): train only that stage, write nothing
    else and return None; a later call without ``stage`` resumes the finished stages and
    writes the package."""
    trainer = LocaliserTrainer(train_items, val_items, out_dir, config, seed, device, threads)
    if stage is None:
        return trainer.fit()
    trainer.fit_stage(stage)
    return None


__all__ = [
    "LocaliserTrainer",
    "resolve_config",
    "train_localiser",
    "weighted_bce",
]
