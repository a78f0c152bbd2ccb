"""Training of one experiment: cube (or DRR) batches -> U-Net -> model.pt, history, curves.

Design choices (and why):

* Loss 0.5 soft Dice + 0.5 cross entropy (seed 003); SGD with Nesterov momentum 0.99 and poly
  learning-rate decay ``lr0 * (1 - step / total) ** 0.9`` per step (nnU-Net), or AdamW
  (``optimizer: adamw``), which converges faster on short CPU budgets.
* Every random choice (batch order, 2D slice choice) is drawn in the main process from one
  ``torch.Generator`` seeded from ``seed``; loaders only *read* the batches of that plan, ahead
  of the step, so how they are loaded never changes the result. ``num_workers: 0`` (the CPU
  default: workers would take cores from the training itself) loads in one background thread;
  ``num_workers: N`` loads in N worker processes (a ``torch.utils.data.DataLoader`` over the
  planned batches, each worker with its own HDF5 handle, pinned memory on CUDA), which keeps a
  GPU fed when decompression is the bottleneck. The fraction of step time spent waiting for
  data is logged per epoch (``data_wait_fraction`` in history.tsv).
* A checkpoint (model, optimizer, scheduler, torch/numpy/python/generator RNG states, epoch,
  history) is written atomically after every epoch to ``checkpoints/last.pt``; a rerun with the
  same experiment resumes from it and, on CPU, ends bit-for-bit where an uninterrupted run ends.
  It holds only tensors, numbers, strings and containers (RNG states as tensors / JSON), so the
  resume loads it with ``torch.load(weights_only=True)``: no arbitrary unpickling.
* Several GPUs (``torch.cuda.device_count() > 1``, i.e. CUDA_VISIBLE_DEVICES / SLURM's
  allocation) train data-parallel: one spawned process per GPU, DistributedDataParallel, each
  rank a disjoint shard of every planned batch and a loss over the whole batch
  (:mod:`ctseg.training.distributed`), so a step equals the single-process step; only rank 0 writes
  checkpoints, history and ``model.pt``.
* 2D models on 3D cubes train on axial slices drawn from the cube (seed 001 compared 2D vs 3D
  on the same cube); ``pos_slice_prob`` of the slices are drawn among slices containing
  foreground (seed 002's positive-slice sampling against the metal class imbalance).
* Validation: whole-volume sliding-window inference at the cube spacing on the validation
  cases, mean foreground Dice per epoch.
* ``model.pt`` holds only tensors and JSON strings (``torch.load(weights_only=True)`` works):
  the state dict, the experiment config, and everything prediction needs (classes -> label ids,
  spacing, patch, HU window, architecture).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import random
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ctseg.core.atomic import atomic_path
from ctseg.core.device import resolve_device
from ctseg.core.errors import InputError
from ctseg.core.imageio import read_image_file
from ctseg.core.normalise import DEFAULT_HU_WINDOW, hu_to_float
from ctseg.core.orientation import to_canonical
from ctseg.core.resample import resample_to_spacing
from ctseg.inference.drr import pad_to_multiple, preprocess_drr, read_drr
from ctseg.inference.postprocess import decode_logits
from ctseg.inference.sliding import slice_patch, slicewise_logits, sliding_window_logits
from ctseg.models import build_model, model_kwargs
from ctseg.training.distributed import (
    GlobalBatchDiceCELoss,
    all_reduce_sum,
    die_with_parent,
    free_port,
    resolve_backend,
    resolve_world_size,
    shard_plan,
    spawn_ranks,
)
from ctseg.training.losses import DiceCELoss, mean_foreground_dice

TASKS = ("vertebrae", "metal", "bone_drr")
DEFAULT_VERTEBRAE = list(range(8, 25))  # T1..L5
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_dice",
    "lr",
    "seconds",
    "data_wait_fraction",
)


# --------------------------------------------------------------------------- classes


def class_ids_for(experiment: dict) -> list[int]:
    """Label id of each class index: [0, *experiment["labels"]] for vertebrae, [0, 1] else."""
    task = experiment.get("task", "vertebrae")
    if task not in TASKS:
        raise ValueError(f"experiment task must be one of {TASKS}, got {task!r}")
    if task == "vertebrae":
        labels = [int(v) for v in experiment.get("labels", DEFAULT_VERTEBRAE)]
        if 0 in labels or len(set(labels)) != len(labels):
            raise ValueError("experiment labels must be distinct non-zero VerSe ids")
        return [0, *labels]
    return [0, 1]


def ids_to_classes(label: np.ndarray, class_ids: list[int]) -> np.ndarray:
    """Map label ids to contiguous class indices; ids not trained on become background."""
    lut = np.zeros(256, dtype=np.int64)
    for c, lid in enumerate(class_ids):
        lut[lid] = c
    return lut[label.astype(np.uint8)]


# --------------------------------------------------------------------------- data


#: 2D models slice volumes [z, y, x] along one of these axes. Sagittal slices hold the whole
#: spine, so a 2D network sees the vertebra order it needs to tell the levels apart; axial
#: slices (the default) suit structures recognisable in-plane, such as metal.
SLICE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}


def slice_axis(experiment: dict) -> int:
    """Array axis ([z, y, x]) a 2D experiment slices along (``slice_axis``, default axial)."""
    name = experiment.get("slice_axis", "axial")
    if name not in SLICE_AXES:
        raise ValueError(f"slice_axis must be one of {', '.join(SLICE_AXES)}, not {name!r}")
    return SLICE_AXES[name]


class CubeSource:
    """Samples of an augmentation cube, as 3D volumes or as 2D slices along one axis."""

    def __init__(self, cube: str | Path, class_ids: list[int], dim: int, axis: int = 0):
        self.path = Path(cube)
        if not self.path.is_file():
            raise InputError("cube not found", path=self.path)
        self.class_ids, self.dim, self.axis = class_ids, dim, axis
        with h5py.File(self.path, "r") as h5:
            self.provenance = json.loads(h5.attrs["provenance"])
            self.n, *self.shape = h5["image"].shape
            self.pos_slices = []
            if dim == 2:
                for i in range(self.n):
                    lab = np.moveaxis(h5["label"][i], axis, 0)
                    self.pos_slices.append(np.flatnonzero(lab.reshape(lab.shape[0], -1).max(1) > 0))
        self._h5: h5py.File | None = None

    def plan_epoch(
        self, gen: torch.Generator, steps: int, batch: int, pos_prob: float
    ) -> list[list[tuple[int, int]]]:
        """Batches of (sample, slice) for one epoch, drawn from ``gen`` (slice -1 = 3D)."""
        picks: list[tuple[int, int]] = []
        while len(picks) < steps * batch:
            for i in torch.randperm(self.n, generator=gen).tolist():
                z = -1
                if self.dim == 2:
                    pos = self.pos_slices[i]
                    if len(pos) and torch.rand((), generator=gen).item() < pos_prob:
                        z = int(pos[torch.randint(len(pos), (), generator=gen).item()])
                    else:
                        z = int(torch.randint(self.shape[self.axis], (), generator=gen).item())
                picks.append((i, z))
        picks = picks[: steps * batch]
        return [picks[k : k + batch] for k in range(0, len(picks), batch)]

    def load(self, batch: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._h5 is None:
            self._h5 = h5py.File(self.path, "r")
        imgs, labs = [], []
        for i, z in batch:
            img, lab = self._h5["image"][i], self._h5["label"][i]
            if z >= 0:
                img, lab = np.take(img, z, axis=self.axis), np.take(lab, z, axis=self.axis)
            imgs.append(img)
            labs.append(ids_to_classes(lab, self.class_ids))
        return torch.from_numpy(np.stack(imgs)[:, None]), torch.from_numpy(np.stack(labs))

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self) -> dict:
        """Picklable for spawned loader workers: an open HDF5 handle is reopened there."""
        return {**self.__dict__, "_h5": None}


class DrrSource:
    """All DRR views of the given cases, pre-processed, padded to the network divisor."""

    def __init__(self, cases: list[dict], variant: str, divisor: int):
        self.images, self.labels = [], []
        for case in cases:
            if len(case.get("drr", [])) != len(case.get("drr_labels", [])):
                raise InputError("drr and drr_labels lists differ in length", case=case.get("case"))
            for p, lp in zip(case["drr"], case["drr_labels"], strict=True):
                arr, _ = read_drr(p, case.get("case"))
                lab, _ = read_drr(lp, case.get("case"))
                if lab.shape != arr.shape:
                    raise InputError(
                        "DRR label differs in size from its DRR", path=lp, case=case.get("case")
                    )
                self.images.append(pad_to_multiple(preprocess_drr(arr, variant), divisor))
                self.labels.append(pad_to_multiple((lab > 0).astype(np.int64), divisor))
        self.n = len(self.images)
        self.shape = list(self.images[0].shape) if self.images else []

    def plan_epoch(
        self, gen: torch.Generator, steps: int, batch: int, pos_prob: float
    ) -> list[list[tuple[int, int]]]:
        picks: list[tuple[int, int]] = []
        while len(picks) < steps * batch:
            picks += [(i, -1) for i in torch.randperm(self.n, generator=gen).tolist()]
        picks = picks[: steps * batch]
        return [picks[k : k + batch] for k in range(0, len(picks), batch)]

    def load(self, batch: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = np.stack([self.images[i] for i, _ in batch])[:, None]
        labs = np.stack([self.labels[i] for i, _ in batch])
        return torch.from_numpy(imgs.astype(np.float32)), torch.from_numpy(labs)

    def close(self) -> None:
        pass


class PlannedBatches(torch.utils.data.Dataset):
    """The batches of one epoch's plan as a map-style dataset: item ``k`` is batch ``k``."""

    def __init__(self, source, plan: list):
        self.source, self.plan = source, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source.load(self.plan[k])


def worker_batches(
    source, plan: list, device: torch.device, workers: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """Yield (image, label, seconds waited) for ``plan``, loaded by ``workers`` processes in
    plan order (a DataLoader keeps each worker ``prefetch_factor`` batches ahead)."""
    source.close()  # no open HDF5 handle crosses the fork
    loader = torch.utils.data.DataLoader(
        PlannedBatches(source, plan),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2,
    )
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            return
        waited = time.perf_counter() - t0
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), waited


def load_batches(
    source, plan: list, device: torch.device, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """The batches of ``plan`` with the time the step waited for each: worker processes when
    ``workers`` > 0, else one background thread."""
    if workers > 0:
        return worker_batches(source, plan, device, workers)
    return prefetch(source, plan, device)


def prefetch(
    source, plan: list, device: torch.device, depth: int = 2
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """Yield (image, label, seconds waited) for ``plan``, loading ahead in a background thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def worker() -> None:
        try:
            for batch in plan:
                if stop.is_set():
                    return
                x, y = source.load(batch)
                if device.type == "cuda":
                    x, y = x.pin_memory(), y.pin_memory()
                q.put((x, y))
            q.put(None)
        except BaseException as exc:  # surfaced in the consumer
            q.put(exc)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = q.get()
            waited = time.perf_counter() - t0
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            x, y = item
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), waited
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def load_val_volumes(
    cases: list[dict], task: str, spacing: list[float], hu_window, class_ids: list[int]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Validation cases at the cube spacing: (case, normalised image, class map) [z, y, x]."""
    out = []
    key = "labels" if task == "vertebrae" else "metal"
    for c in cases:
        if not c.get(key):
            raise InputError(f"validation case needs {key!r}", case=c.get("case"), path=c.get("ct"))
        ct = read_image_file(c["ct"], c.get("case"))
        lab = read_image_file(c[key], c.get("case"))
        lab.CopyInformation(ct)
        ct, lab = to_canonical(ct), to_canonical(lab)
        img = hu_to_float(
            sitk.GetArrayFromImage(
                resample_to_spacing(
                    sitk.Cast(ct, sitk.sitkFloat32), spacing, is_label=False, default=-1000.0
                )
            ),
            hu_window,
        )
        lab_arr = sitk.GetArrayFromImage(
            resample_to_spacing(sitk.Cast(lab, sitk.sitkUInt8), spacing, is_label=True)
        )
        if task == "metal":
            lab_arr = (lab_arr > 0).astype(np.uint8)
        out.append((str(c.get("case")), img, ids_to_classes(lab_arr, class_ids)))
    return out


# --------------------------------------------------------------------------- helpers


def set_threads(experiment: dict, threads: int | None = None) -> int:
    """torch intra-op threads: ``threads`` argument (e.g. the workflow rule's threads), else
    experiment ``threads``, else $CTSEG_THREADS, else all the machine's cores."""
    n = int(
        threads
        or experiment.get("threads")
        or os.environ.get("CTSEG_THREADS")
        or os.cpu_count()
        or 1
    )
    torch.set_num_threads(max(1, n))
    return n


def experiment_hash(experiment: dict, seed: int, extra: dict) -> str:
    """Identity of a training run: a checkpoint is resumed only when this matches."""
    blob = json.dumps(
        {"experiment": experiment, "seed": seed, **extra}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def make_optimizer(experiment: dict, params, total_steps: int):
    """SGD Nesterov (default, lr 0.01, momentum 0.99) or AdamW (lr 1e-3), with poly decay."""
    name = experiment.get("optimizer", "sgd")
    wd = float(experiment.get("weight_decay", 3e-5))
    if name == "sgd":
        opt = torch.optim.SGD(
            params,
            lr=float(experiment.get("lr", 0.01)),
            momentum=float(experiment.get("momentum", 0.99)),
            nesterov=True,
            weight_decay=wd,
        )
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=float(experiment.get("lr", 1e-3)), weight_decay=wd)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")
    power = float(experiment.get("poly_power", 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: max(0.0, 1.0 - step / max(1, total_steps)) ** power
    )
    return opt, sched


def rng_states(gen: torch.Generator, device: torch.device | None = None) -> dict:
    """Every RNG state a run draws from, as tensors and JSON strings only, so the checkpoint
    loads with ``torch.load(weights_only=True)`` (no unpickling of arbitrary objects): python's
    ``random`` state (version, 625 ints, gauss_next) and numpy's legacy MT19937 state are JSON,
    torch's CPU/CUDA and the plan generator's states are byte tensors."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy_json": json.dumps([name, keys.tolist(), int(pos), int(has_gauss), float(cached)]),
        "python_json": json.dumps([version, list(internal), gauss_next]),
        "generator": gen.get_state(),
    }
    if device is not None and device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng_states(
    states: dict, gen: torch.Generator, device: torch.device | None = None
) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = json.loads(states["numpy_json"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = json.loads(states["python_json"])
    random.setstate((version, tuple(internal), gauss_next))
    gen.set_state(states["generator"])
    if device is not None and device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at ``path`` loaded with ``weights_only=True``; None when absent or not
    loadable that way (e.g. written by an older ctseg with pickled RNG states): training then
    starts afresh rather than unpickling arbitrary objects."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means a fresh start
        tqdm.write(f"ignoring checkpoint {path} (not loadable with weights_only=True: {exc})")
        return None


def write_history(path: Path, history: list[dict]) -> None:
    lines = ["\t".join(HISTORY_COLUMNS)]
    for h in history:
        lines.append(
            "\t".join(
                f"{h[c]:.6g}" if isinstance(h[c], float) else str(h[c]) for c in HISTORY_COLUMNS
            )
        )
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def plot_history(path: Path, history: list[dict], title: str) -> None:
    """Loss (train, val) and validation Dice per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a1.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    a1.set_xlabel("epoch")
    a1.set_ylabel("0.5 Dice + 0.5 CE loss")
    a1.legend()
    a2.plot(ep, [h["val_dice"] for h in history], "o-", color="C2")
    a2.set_ylim(0, 1)
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation mean Dice")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


@torch.no_grad()
def validate_sums(
    model, val, patch, n_classes, loss_fn, device, dim: int, axis: int = 0
) -> list[float]:
    """[loss sum, foreground Dice sum, number of cases] over whole validation volumes/images
    (sums, so that ranks validating disjoint shares of the cases can be all-reduced)."""
    loss_sum, dice_sum = 0.0, 0.0
    for _case, img, cls in val:
        if dim == 2 and img.ndim == 3:
            logits = slicewise_logits(model, img, patch, axis, n_classes, device=device)
        else:
            logits = sliding_window_logits(model, img, patch, n_classes, device=device)
        lt = torch.from_numpy(logits)[None]
        loss_sum += float(loss_fn(lt, torch.from_numpy(cls)[None].long()))
        dice_sum += mean_foreground_dice(decode_logits(logits), cls, n_classes)
    model.train()
    return [loss_sum, dice_sum, float(len(val))]


# --------------------------------------------------------------------------- main entry


def train_experiment(
    experiment: dict,
    train_data: dict,
    val_data: dict,
    out_dir: Path,
    *,
    seed: int,
    device: str = "auto",
    threads: int | None = None,
) -> None:
    """Train ``experiment`` and write ``model.pt``, ``history.tsv``, ``loss.png`` in ``out_dir``.

    ``train_data``: ``{"cube": path}`` (volume tasks) or ``{"cases": [...]}`` (bone_drr);
    ``val_data``: ``{"cases": [...]}``. Experiment keys (defaults): ``task`` (vertebrae),
    ``model`` (unet3d), ``base_width`` (16), ``depth`` (4), ``norm`` (instance), ``labels``
    (T1..L5), ``epochs`` (20), ``batch_size`` (2 for 3D, 8 for 2D), ``steps_per_epoch``,
    ``optimizer`` (sgd | adamw), ``lr``, ``momentum``, ``weight_decay``, ``poly_power``,
    ``loss_weights`` ([0.5, 0.5] Dice, CE), ``pos_slice_prob`` (2D on cubes, 0.5), ``threads``,
    ``val_every`` (1: validate every epoch; the last epoch always), ``num_workers`` (0: load
    in a background thread; N: in N worker processes), ``preprocess`` (bone_drr), ``tta_flip``
    and ``postprocess`` (used by predict),
    ``world_size`` (data-parallel processes; default ``$CTSEG_WORLD_SIZE``, else the visible GPU
    count on CUDA, else 1; ``batch_size`` must be divisible by it) and ``dist_backend`` (nccl on
    CUDA, gloo on CPU; default ``$CTSEG_DIST_BACKEND``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    if dist.is_available() and dist.is_initialized():  # launched by torchrun or a caller
        world, rank = dist.get_world_size(), dist.get_rank()
        if dev.type == "cuda" and world > 1:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        _train(experiment, train_data, val_data, out_dir, seed, dev, threads, rank, world)
        return
    world = resolve_world_size(experiment, dev)
    if world == 1:
        _train(experiment, train_data, val_data, out_dir, seed, dev, threads, 0, 1)
        return
    dim = 2 if model_kwargs(experiment)["model"] == "unet2d" else 3
    batch = int(experiment.get("batch_size", 8 if dim == 2 else 2))
    if batch % world:  # equal shards: DDP's gradient average is then the full-batch gradient
        raise ValueError(f"batch_size {batch} must be divisible by world_size {world}")
    backend = resolve_backend(experiment, dev)
    n_threads = set_threads(experiment, threads)
    if dev.type == "cpu" and not (threads or experiment.get("threads")):
        n_threads = max(1, n_threads // world)  # ranks share the cores
    spawn_ranks(
        _spawned_rank,
        (
            world,
            backend,
            free_port(),
            (experiment, train_data, val_data, str(out_dir), seed, dev.type, n_threads),
        ),
        world,
    )


def _spawned_rank(rank: int, world: int, backend: str, port: int, job: tuple) -> None:
    """Entry point of one spawned data-parallel rank (module level: spawn pickles it)."""
    die_with_parent()
    experiment, train_data, val_data, out_dir, seed, dev_type, threads = job
    dev = torch.device("cuda", rank) if dev_type == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        _train(experiment, train_data, val_data, Path(out_dir), seed, dev, threads, rank, world)
    finally:
        dist.destroy_process_group()


def _train(
    experiment: dict,
    train_data: dict,
    val_data: dict,
    out_dir: Path,
    seed: int,
    dev: torch.device,
    threads: int | None,
    rank: int,
    world: int,
) -> None:
    """The training loop of one process; ``rank``/``world`` > 1: one DDP rank of ``world``."""
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    main = rank == 0
    set_threads(experiment, threads)
    task = experiment.get("task", "vertebrae")
    class_ids = class_ids_for(experiment)
    n_classes = len(class_ids)
    mk = model_kwargs(experiment)
    dim = 2 if mk["model"] == "unet2d" else 3

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(experiment, n_classes).to(dev)

    if task == "bone_drr":
        if dim != 2:
            raise ValueError("bone_drr needs a 2D model (unet2d)")
        variant = experiment.get("preprocess", "none")
        source = DrrSource(train_data.get("cases", []), variant, model.divisor)
        if source.n == 0:
            raise InputError("no training DRRs", path=out_dir)
        val = []
        for c in val_data.get("cases", []):
            vs = DrrSource([c], variant, model.divisor)
            val += [
                (str(c.get("case")), im, lb) for im, lb in zip(vs.images, vs.labels, strict=True)
            ]
        spacing, hu_window = [], []
        patch_zyx = tuple(source.shape)
        patch_xyz = list(reversed(source.shape))
    else:
        source = CubeSource(train_data["cube"], class_ids, dim, axis=slice_axis(experiment))
        prov = source.provenance
        if prov.get("task", task) != task:
            raise InputError(
                f"cube task {prov.get('task')!r} does not match experiment task {task!r}",
                path=source.path,
            )
        spacing, hu_window = prov["spacing_mm"], prov.get("hu_window", list(DEFAULT_HU_WINDOW))
        patch_zyx = tuple(source.shape)
        patch_xyz = list(reversed(source.shape))
        checked = slice_patch(patch_zyx, source.axis) if dim == 2 else patch_zyx
        if any(p % model.divisor for p in checked):
            raise ValueError(
                f"cube patch {patch_xyz} must be divisible by {model.divisor} for depth {mk['depth']}"
            )
        val = load_val_volumes(val_data.get("cases", []), task, spacing, hu_window, class_ids)

    epochs = int(experiment.get("epochs", 20))
    batch = int(experiment.get("batch_size", 8 if dim == 2 else 2))
    default_steps = math.ceil(source.n * (8 if (dim == 2 and task != "bone_drr") else 1) / batch)
    steps = int(experiment.get("steps_per_epoch", default_steps))
    pos_prob = float(experiment.get("pos_slice_prob", 0.5))
    workers = int(experiment.get("num_workers", 0))
    w_dice, w_ce = experiment.get("loss_weights", [0.5, 0.5])
    loss_fn = DiceCELoss(w_dice, w_ce).to(dev)
    opt, sched = make_optimizer(experiment, model.parameters(), epochs * steps)
    # the world size is not part of the run's identity: the global-batch loss makes a step the
    # same under any world size, so a checkpoint resumes on a different number of GPUs
    # nor is how batches are loaded (the plan fixes every random choice)
    identity = {
        k: v
        for k, v in experiment.items()
        if k not in ("world_size", "dist_backend", "num_workers")
    }
    run_id = experiment_hash(identity, seed, {"n": source.n, "shape": list(source.shape)})

    history: list[dict] = []
    start_epoch = 0
    ck = load_checkpoint(ckpt_path)
    if ck is not None and ck.get("run_id") == run_id:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        restore_rng_states(ck["rng"], gen, dev)
        history, start_epoch = ck["history"], int(ck["epoch"])
        if main:
            tqdm.write(f"resuming {out_dir.name} from epoch {start_epoch}")
    raw = model  # checkpoints and model.pt hold the unwrapped module's state dict
    if world > 1:
        if dev.type == "cuda" and mk.get("norm") == "batch":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            raw = model
        model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        step_loss = GlobalBatchDiceCELoss(w_dice, w_ce, world)
    else:
        step_loss = None

    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if dev.type == "cuda"
        else nullcontext
    )
    model.train()
    try:
        for epoch in tqdm(
            range(start_epoch, epochs),
            desc=f"train {out_dir.name}",
            unit="epoch",
            initial=start_epoch,
            total=epochs,
            disable=not main,
        ):
            t0 = time.perf_counter()
            plan = source.plan_epoch(gen, steps, batch, pos_prob)  # identical on every rank
            if world > 1:
                plan = shard_plan(plan, rank, world)
            losses, waited = [], 0.0
            steps_bar = tqdm(
                load_batches(source, plan, dev, workers),
                total=len(plan),
                desc=f"epoch {epoch + 1}",
                unit="step",
                leave=False,
                disable=not main,
            )
            for x, y, w in steps_bar:
                waited += w
                opt.zero_grad(set_to_none=True)
                with autocast():
                    logits = model(x)
                if step_loss is None:
                    loss = value = loss_fn(logits.float(), y)
                else:  # DDP: Dice over the whole batch of all ranks
                    loss, value = step_loss(logits.float(), y)
                loss.backward()  # DDP all-reduces (averages) the gradients here
                torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
                opt.step()
                sched.step()
                losses.append(float(value.detach()))
                steps_bar.set_postfix(loss=f"{losses[-1]:.3f}")
            train_seconds = time.perf_counter() - t0
            val_every = int(experiment.get("val_every", 1))
            if (epoch + 1) % val_every == 0 or epoch + 1 == epochs:
                # each rank validates its share of the cases; the sums are all-reduced
                sums = validate_sums(
                    raw,
                    val[rank::world],
                    patch_zyx,
                    n_classes,
                    loss_fn,
                    dev,
                    dim,
                    slice_axis(experiment),
                )
                loss_sum, dice_sum, n_val = all_reduce_sum(sums, dev) if world > 1 else sums
                val_loss = loss_sum / n_val if n_val else float("nan")
                val_dice = dice_sum / n_val if n_val else float("nan")
            else:  # validation is whole-volume inference: costly on a CPU, so optionally sparse
                val_loss, val_dice = float("nan"), float("nan")
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": float(np.mean(losses)),
                    "val_loss": val_loss,
                    "val_dice": val_dice,
                    "lr": float(opt.param_groups[0]["lr"]),
                    "seconds": time.perf_counter() - t0,
                    "data_wait_fraction": waited / max(train_seconds, 1e-9),
                }
            )
            if not main:
                continue  # only rank 0 writes the log, checkpoint and history
            tqdm.write(
                f"epoch {epoch + 1}/{epochs} loss {history[-1]['train_loss']:.4f} val_loss {val_loss:.4f} val_dice {val_dice:.4f}"
            )
            ck = {
                "run_id": run_id,
                "model": raw.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": rng_states(gen, dev),
                "epoch": epoch + 1,
                "history": history,
            }
            with atomic_path(ckpt_path) as tmp:
                torch.save(ck, tmp)
            write_history(out_dir / "history.tsv", history)
    finally:
        source.close()
    if not main:
        return

    meta = {
        "task": task,
        "dim": dim,
        "slice_axis": slice_axis(experiment),
        "n_classes": n_classes,
        "class_ids": class_ids,
        "spacing_mm": spacing,
        "patch": patch_xyz,
        "hu_window": list(hu_window),
        "normalisation": "clip(HU, hu_window) scaled linearly to [0, 1]"
        if task != "bone_drr"
        else f"ctseg.drr.preprocess.apply(drr, {experiment.get('preprocess', 'none')!r})",
        "model_kwargs": mk,
        "seed": seed,
        "epochs": epochs,
    }
    write_history(out_dir / "history.tsv", history)
    plot_history(out_dir / "loss.png", history, out_dir.name)
    save_model_pt(out_dir / "model.pt", raw, experiment, meta)


def save_model_pt(path: Path, model: torch.nn.Module, experiment: dict, meta: dict) -> None:
    """Write ``model.pt`` atomically: tensors + JSON strings only, so that
    ``torch.load(weights_only=True)`` can read it (no pickled code from a model file).

    ``meta`` keys used by :func:`ctseg.inference.predict.load_model`: task, dim, n_classes, class_ids,
    spacing_mm, patch (x, y, z), hu_window, model_kwargs.
    """
    blob = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "experiment_json": json.dumps(experiment, sort_keys=True, default=str),
        "meta_json": json.dumps(meta, sort_keys=True),
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
