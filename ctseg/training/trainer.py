"""The trainer: one object per training run, organised as small hooks (nnU-Net's trainer).

Design choices (and why):

* Loss 0.5 soft Dice + 0.5 cross entropy (seed 003); SGD with Nesterov momentum 0.99 and poly
  learning-rate decay ``lr0 * (1 - step / total) ** 0.9`` per step (nnU-Net), or AdamW
  (``optimizer: adamw``), which converges faster on short CPU budgets.
* Every random choice is drawn from one generator seeded from ``seed``
  (:mod:`ctseg.training.data`), so a run is reproducible whatever loads the batches.
* A checkpoint (model, optimizer, scheduler, RNG states, epoch, history, fingerprint) is written
  atomically after every epoch; a rerun resumes from it only when the fingerprint matches
  (:mod:`ctseg.training.checkpoint`) and, on CPU, ends bit-for-bit where an uninterrupted run ends.
* Several GPUs train data-parallel (one spawned process per GPU, DDP, each rank a disjoint shard
  of every planned batch, the loss over the whole batch: :mod:`ctseg.training.distributed`);
  only rank 0 writes checkpoints, history and ``model.pt``.
* 2D models on cubes train on slices along ``slice_axis``; ``pos_slice_prob`` of them among
  slices holding foreground (seed 002's positive-slice sampling).
* Validation: whole-volume sliding-window inference at the cube spacing in the canonical
  orientation (:mod:`ctseg.inference.sliding`, the code prediction uses), mean foreground Dice.

The hooks (:meth:`Trainer.setup`, :meth:`configure_optimizer`, :meth:`maybe_resume`,
:meth:`train_step`, :meth:`validation_step`, :meth:`end_of_epoch`, :meth:`save_checkpoint`,
:meth:`finish`) are what a new task overrides; :meth:`run` only strings them together.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ctseg.core.atomic import atomic_path
from ctseg.core.config import ExperimentConfig
from ctseg.core.errors import ConfigError, InputError
from ctseg.core.tasks import get_task
from ctseg.inference.package import make_plan, save_package
from ctseg.inference.postprocess import decode_logits
from ctseg.inference.sliding import slice_patch, slicewise_logits, sliding_window_logits
from ctseg.models import build_model
from ctseg.report.training import plot_history
from ctseg.training.checkpoint import (
    fingerprint,
    fingerprint_mismatch,
    load_checkpoint,
    restore_rng_states,
    rng_states,
)
from ctseg.training.data import CubeSource, DrrSource, load_batches, load_val_volumes
from ctseg.training.distributed import GlobalBatchDiceCELoss, all_reduce_sum
from ctseg.training.history import write_history
from ctseg.training.losses import DiceCELoss, mean_foreground_dice
from ctseg.training.precision import (
    bf16_on_cpu,
    mixed_precision,
    require_bf16_safe_depth,
    to_channels_last,
)


def set_threads(experiment: ExperimentConfig, threads: int | None = None) -> int:
    """torch intra-op threads: ``threads`` argument (e.g. the workflow rule's threads), else
    experiment ``threads``, else $CTSEG_THREADS, else all the machine's cores."""
    n = int(threads or experiment.threads or os.environ.get("CTSEG_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    return n


def make_optimizer(experiment: ExperimentConfig, params, total_steps: int):
    """SGD Nesterov (default, lr 0.01, momentum 0.99) or AdamW (lr 1e-3), with poly decay."""
    if experiment.optimizer == "sgd":
        opt = torch.optim.SGD(
            params,
            lr=experiment.learning_rate,
            momentum=experiment.momentum,
            nesterov=True,
            weight_decay=experiment.weight_decay,
        )
    else:
        opt = torch.optim.AdamW(
            params, lr=experiment.learning_rate, weight_decay=experiment.weight_decay
        )
    power = experiment.poly_power
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: max(0.0, 1.0 - step / max(1, total_steps)) ** power
    )
    return opt, sched


@torch.no_grad()
def validate_sums(
    model, val, patch, n_classes, loss_fn, device, dim: int, axis: int = 0, cpu_bf16: bool = False
) -> list[float]:
    """[loss sum, foreground Dice sum, number of cases] over whole validation volumes/images
    (sums, so that ranks validating disjoint shares of the cases can be all-reduced), the
    forward pass in the precision prediction will use (``cpu_bf16``)."""
    loss_sum, dice_sum = 0.0, 0.0
    kw = {"device": device, "cpu_bf16": cpu_bf16}
    for _case, img, cls in val:
        if dim == 2 and img.ndim == 3:
            logits = slicewise_logits(model, img, patch, axis, n_classes, **kw)
        else:
            logits = sliding_window_logits(model, img, patch, n_classes, **kw)
        lt = torch.from_numpy(logits)[None]
        loss_sum += float(loss_fn(lt, torch.from_numpy(cls)[None].long()))
        dice_sum += mean_foreground_dice(decode_logits(logits), cls, n_classes)
    model.train()
    return [loss_sum, dice_sum, float(len(val))]


class Trainer:
    """One training run of one experiment in one process (one DDP rank when ``world`` > 1)."""

    def __init__(
        self,
        experiment: ExperimentConfig,
        train_data: dict,
        val_data: dict,
        out_dir: Path,
        *,
        seed: int,
        device: torch.device,
        threads: int | None = None,
        rank: int = 0,
        world: int = 1,
    ):
        self.exp, self.train_data, self.val_data = experiment, train_data, val_data
        self.out_dir, self.seed, self.dev = Path(out_dir), int(seed), device
        self.threads, self.rank, self.world = threads, rank, world
        self.main = rank == 0
        self.task = get_task(experiment.task)
        self.class_ids = experiment.class_ids
        self.n_classes = len(self.class_ids)
        self.dim = experiment.dim
        self.ckpt_path = self.out_dir / "checkpoints" / "last.pt"
        self.history: list[dict] = []
        self.start_epoch = 0

    def log(self, msg: str) -> None:
        if self.main:
            tqdm.write(msg)

    # ------------------------------------------------------------------ hooks
    def setup(self) -> None:
        """Seeds, network, training source, validation data, loss."""
        set_threads(self.exp, self.threads)
        torch.manual_seed(self.seed)
        np.random.seed(self.seed % 2**32)
        random.seed(self.seed)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.model = build_model(self.exp.model_kwargs(), self.n_classes).to(self.dev)
        if self.exp.channels_last:
            to_channels_last(self.model, self.dim)
        if self.task.uses_cube:
            self.setup_cube()
        else:
            self.setup_drr()
        self.batch = self.exp.batch
        per_sample = 8 if (self.dim == 2 and self.task.uses_cube) else 1
        self.steps = self.exp.steps_per_epoch or math.ceil(self.source.n * per_sample / self.batch)
        w_dice, w_ce = self.exp.loss_weights
        self.loss_fn = DiceCELoss(w_dice, w_ce).to(self.dev)
        self.step_loss = GlobalBatchDiceCELoss(w_dice, w_ce, self.world) if self.world > 1 else None

    def setup_cube(self) -> None:
        if not self.train_data.get("cube"):
            raise InputError("training needs a cube", path=self.out_dir)
        self.source = CubeSource(
            self.train_data["cube"],
            self.class_ids,
            self.dim,
            axis=self.exp.axis,
            merge=self.exp.merge_foreground,
        )
        prov = self.source.provenance
        if prov.get("task", self.exp.task) != self.exp.task:
            raise InputError(
                f"cube task {prov.get('task')!r} does not match experiment task {self.exp.task!r}",
                path=self.source.path,
            )
        self.spacing = prov["spacing_mm"]
        self.hu_window = prov.get("hu_window", [-1000.0, 2000.0])
        self.patch_zyx = tuple(self.source.shape)
        checked = slice_patch(self.patch_zyx, self.source.axis) if self.dim == 2 else self.patch_zyx
        if any(p % self.model.divisor for p in checked):
            raise ConfigError(
                f"experiment {self.exp.name}: cube patch {list(reversed(self.patch_zyx))} must be "
                f"divisible by {self.model.divisor} for depth {self.exp.depth}"
            )
        if self.dim == 3 and bf16_on_cpu(self.dev, self.exp.cpu_bf16):
            require_bf16_safe_depth(
                self.patch_zyx[0], self.model.divisor, f"experiment {self.exp.name}"
            )
        self.val = load_val_volumes(
            self.val_data.get("cases", []),
            self.exp.task,
            self.spacing,
            self.hu_window,
            self.class_ids,
            self.exp.merge_foreground,
        )
        self.data_files = [self.source.path]
        self.val_files = [
            c[k]
            for c in self.val_data.get("cases", [])
            for k in ("ct", self.task.truth_key)
            if c.get(k)
        ]

    def setup_drr(self) -> None:
        variant = self.exp.preprocess
        cases = self.train_data.get("cases", [])
        self.source = DrrSource(cases, variant, self.model.divisor)
        if self.source.n == 0:
            raise InputError("no training DRRs", path=self.out_dir)
        self.val = []
        for c in self.val_data.get("cases", []):
            vs = DrrSource([c], variant, self.model.divisor)
            self.val += [
                (str(c.get("case")), im, lb) for im, lb in zip(vs.images, vs.labels, strict=True)
            ]
        self.spacing, self.hu_window = [], []
        self.patch_zyx = tuple(self.source.shape)
        self.data_files = [p for c in cases for p in (*c.get("drr", []), *c.get("drr_labels", []))]
        self.val_files = [
            p
            for c in self.val_data.get("cases", [])
            for p in (*c.get("drr", []), *c.get("drr_labels", []))
        ]

    def configure_optimizer(self) -> None:
        self.opt, self.sched = make_optimizer(
            self.exp, self.model.parameters(), self.exp.epochs * self.steps
        )

    def current_fingerprint(self) -> dict:
        return fingerprint(
            experiment=self.exp.training_identity(),
            seed=self.seed,
            data_files=self.data_files,
            val_files=self.val_files,
        )

    def maybe_resume(self) -> None:
        """Resume from the last checkpoint when it belongs to this very run, else start over."""
        self.fingerprint = self.current_fingerprint()
        ck = load_checkpoint(self.ckpt_path)
        if ck is None:
            return
        differs = fingerprint_mismatch(ck.get("fingerprint"), self.fingerprint)
        if differs:
            self.log(
                f"discarding checkpoint {self.ckpt_path}: {', '.join(differs)} changed since it "
                f"was written; training {self.out_dir.name} from epoch 0"
            )
            return
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        restore_rng_states(ck["rng"], self.gen, self.dev)
        self.history, self.start_epoch = ck["history"], int(ck["epoch"])
        self.log(f"resuming {self.out_dir.name} from epoch {self.start_epoch}")

    def wrap_parallel(self) -> None:
        self.raw = self.model  # checkpoints and model.pt hold the unwrapped module
        if self.world > 1:
            if self.dev.type == "cuda" and self.exp.norm == "batch":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                self.raw = self.model
            self.model = DDP(
                self.model, device_ids=[self.dev.index] if self.dev.type == "cuda" else None
            )

    def autocast(self):
        return mixed_precision(self.dev, self.exp.cpu_bf16)()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        if self.exp.channels_last:
            x = to_channels_last(x)
        with self.autocast():
            logits = self.model(x)
        if self.step_loss is None:
            loss = value = self.loss_fn(logits.float(), y)
        else:  # DDP: Dice over the whole batch of all ranks
            loss, value = self.step_loss(logits.float(), y)
        loss.backward()  # DDP all-reduces (averages) the gradients here
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
        self.opt.step()
        self.sched.step()
        return float(value.detach())

    def validation_step(self, epoch: int) -> tuple[float, float]:
        """(validation loss, mean foreground Dice); NaN on epochs that skip validation
        (whole-volume inference is costly on a CPU, so ``val_every`` may make it sparse)."""
        if (epoch + 1) % self.exp.val_every and epoch + 1 != self.exp.epochs:
            return float("nan"), float("nan")
        sums = validate_sums(
            self.raw, self.val[self.rank :: self.world], self.patch_zyx, self.n_classes,
            self.loss_fn, self.dev, self.dim, self.exp.axis, self.exp.cpu_bf16,
        )  # fmt: skip
        loss_sum, dice_sum, n_val = all_reduce_sum(sums, self.dev) if self.world > 1 else sums
        if not n_val:
            return float("nan"), float("nan")
        return loss_sum / n_val, dice_sum / n_val

    def end_of_epoch(
        self,
        epoch: int,
        losses: list[float],
        seconds: float,
        waited: float,
        train_seconds: float,
        val: tuple[float, float],
    ) -> None:
        self.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "val_loss": val[0],
                "val_dice": val[1],
                "lr": float(self.opt.param_groups[0]["lr"]),
                "seconds": seconds,
                "data_wait_fraction": waited / max(train_seconds, 1e-9),
            }
        )
        if not self.main:
            return  # only rank 0 writes the log, checkpoint and history
        h = self.history[-1]
        self.log(
            f"epoch {epoch + 1}/{self.exp.epochs} loss {h['train_loss']:.4f} "
            f"val_loss {val[0]:.4f} val_dice {val[1]:.4f}"
        )
        self.save_checkpoint(epoch)
        write_history(self.out_dir / "history.tsv", self.history)

    def save_checkpoint(self, epoch: int) -> None:
        ck = {
            "fingerprint": self.fingerprint,
            "model": self.raw.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": rng_states(self.gen, self.dev),
            "epoch": epoch + 1,
            "history": self.history,
        }
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(ck, tmp)

    def plan(self) -> dict:
        """Everything prediction needs besides the weights (stored as model.pt's meta)."""
        return {
            "task": self.exp.task,
            "dim": self.dim,
            "slice_axis": self.exp.axis,
            "n_classes": self.n_classes,
            "class_ids": self.class_ids,
            "classes": self.exp.classes,
            "spacing_mm": self.spacing,
            "orientation": "LPS",
            "patch": list(reversed(self.patch_zyx)),
            "hu_window": list(self.hu_window),
            "normalisation": "clip(HU, hu_window) scaled linearly to [0, 1]"
            if self.task.uses_cube
            else f"ctseg.drr.preprocess.apply(drr, {self.exp.preprocess!r})",
            "model_kwargs": self.exp.model_kwargs(),
            "seed": self.seed,
            "epochs": self.exp.epochs,
            "fingerprint": self.fingerprint,
        }

    def finish(self) -> None:
        if not self.main:
            return
        write_history(self.out_dir / "history.tsv", self.history)
        plot_history(self.out_dir / "loss.png", self.history, self.out_dir.name)
        experiment = self.exp.to_dict()
        last_val = next((h for h in reversed(self.history) if h["val_dice"] == h["val_dice"]), None)
        extra = {
            "training_cases": list(getattr(self.source, "provenance", {}).get("cases", []))
            or [str(c.get("case")) for c in self.train_data.get("cases", [])],
            "validation_cases": [str(c.get("case")) for c in self.val_data.get("cases", [])],
            "validation": None
            if last_val is None
            else {
                "epoch": last_val["epoch"],
                "dice": last_val["val_dice"],
                "loss": last_val["val_loss"],
            },
        }
        plan = make_plan(self.plan(), experiment, extra)
        save_package(self.out_dir / "model.pt", self.raw, experiment, plan)

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        self.setup()
        self.configure_optimizer()
        self.maybe_resume()
        self.wrap_parallel()
        self.model.train()
        epochs = self.exp.epochs
        try:
            for epoch in tqdm(
                range(self.start_epoch, epochs),
                desc=f"train {self.out_dir.name}",
                unit="epoch",
                initial=self.start_epoch,
                total=epochs,
                disable=not self.main,
            ):
                t0 = time.perf_counter()
                plan = self.source.plan_epoch(
                    self.gen, self.steps, self.batch, self.exp.pos_slice_prob
                )
                if self.world > 1:
                    from ctseg.training.distributed import shard_plan

                    plan = shard_plan(plan, self.rank, self.world)
                losses, waited = [], 0.0
                bar = tqdm(
                    load_batches(self.source, plan, self.dev, self.exp.num_workers),
                    total=len(plan),
                    desc=f"epoch {epoch + 1}",
                    unit="step",
                    leave=False,
                    disable=not self.main,
                )
                for x, y, w in bar:
                    waited += w
                    losses.append(self.train_step(x, y))
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                train_seconds = time.perf_counter() - t0
                val = self.validation_step(epoch)
                self.end_of_epoch(
                    epoch, losses, time.perf_counter() - t0, waited, train_seconds, val
                )
        finally:
            self.source.close()
        self.finish()


def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()
