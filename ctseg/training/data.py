"""Training data: cube samples and DRR images as planned batches, and validation volumes.

Every random choice (batch order, 2D slice choice) is drawn in the main process from one
``torch.Generator``; loaders only *read* the batches of that plan, ahead of the step (one
background thread, or N worker processes over a ``DataLoader``), so how data is loaded never
changes the result.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk
import torch

from ctseg.core.errors import InputError
from ctseg.core.imageio import read_image_file
from ctseg.core.normalise import hu_to_float
from ctseg.core.orientation import to_canonical
from ctseg.core.resample import resample_to_spacing
from ctseg.core.tasks import get_task
from ctseg.inference.drr import pad_to_multiple, preprocess_drr, read_drr


def ids_to_classes(label: np.ndarray, class_ids: list[int], merge: bool = False) -> np.ndarray:
    """Map label ids to contiguous class indices; ids not trained on become background.
    ``merge``: every non-zero id is class 1 (a vertebra-foreground model)."""
    if merge:
        return (label > 0).astype(np.int64)
    lut = np.zeros(256, dtype=np.int64)
    for c, lid in enumerate(class_ids):
        lut[lid] = c
    return lut[label.astype(np.uint8)]


class CubeSource:
    """Samples of an augmentation cube, as 3D volumes or as 2D slices along one axis."""

    def __init__(
        self, cube: str | Path, class_ids: list[int], dim: int, axis: int = 0, merge: bool = False
    ):
        self.path = Path(cube)
        self.merge = merge
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
            labs.append(ids_to_classes(lab, self.class_ids, self.merge))
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
    cases: list[dict],
    task: str,
    spacing: list[float],
    hu_window,
    class_ids: list[int],
    merge: bool = False,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Validation cases at the cube spacing: (case, normalised image, class map) [z, y, x]."""
    out = []
    key = get_task(task).truth_key
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
        out.append((str(c.get("case")), img, ids_to_classes(lab_arr, class_ids, merge)))
    return out
