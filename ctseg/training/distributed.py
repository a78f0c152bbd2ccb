"""Data-parallel training support: world size, process launch, batch shards, global-batch loss.

Why this shape:

* One process per GPU (``torch.multiprocessing.spawn``) on a free localhost port: a workflow
  rule or a SLURM job gets N GPUs and calls :func:`ctseg.training.train.train_experiment` once; the
  spawning stays inside ctseg, so no ``torchrun`` wrapper is needed in the rules.
* Every rank draws the same batch plan from the same seeded generator and takes a disjoint
  contiguous slice of each batch (:func:`shard_plan`): the effective batch and the sequence of
  samples are those of single-process training.
* The loss is made *global-batch exact* (:class:`GlobalBatchDiceCELoss`): the soft Dice term
  sums its intersection/denominator over the whole batch, which is not separable into per-shard
  means, so the per-class sums are all-reduced across ranks. With DDP's gradient averaging the
  gradients (and so the weights) equal single-process training with the same batch, up to
  floating-point summation order, so a checkpoint can resume under any world size.
* The world size and backend are injectable (experiment ``world_size`` / ``dist_backend`` or
  ``$CTSEG_WORLD_SIZE`` / ``$CTSEG_DIST_BACKEND``) so CPU tests run the real
  ``torch.distributed`` code path with gloo.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ctseg.core.errors import ConfigError


def resolve_world_size(experiment, device: torch.device) -> int:
    """Processes to train with: experiment ``world_size``, else ``$CTSEG_WORLD_SIZE``, else the
    number of visible GPUs on CUDA (``device_count`` honours CUDA_VISIBLE_DEVICES, which SLURM
    sets to the job's allocation), else 1."""
    n = experiment.world_size or os.environ.get("CTSEG_WORLD_SIZE")
    if n is None or n == "":
        n = torch.cuda.device_count() if device.type == "cuda" else 1
    n = int(n)
    if n < 1:
        raise ConfigError(f"world_size must be >= 1, got {n}")
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise ConfigError(f"world_size {n} exceeds the {torch.cuda.device_count()} visible GPUs")
    return n


def resolve_backend(experiment, device: torch.device) -> str:
    """nccl on CUDA, gloo on CPU; overridable (``dist_backend`` / ``$CTSEG_DIST_BACKEND``)."""
    b = experiment.dist_backend or os.environ.get("CTSEG_DIST_BACKEND")
    return str(b) if b else ("nccl" if device.type == "cuda" else "gloo")


def free_port() -> int:
    """A currently free TCP port on localhost (the rendezvous of this job's processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_ranks(fn, args: tuple, nprocs: int) -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs)`` without re-running ``__main__`` in the
    ranks.

    The spawn start method makes each child import the parent's main script by path before
    running ``fn``; a script with unguarded top-level code (Snakemake ``script:`` rules such as
    scripts/train.py) would then start training again inside each rank and fail. ``fn`` and its
    arguments live in importable modules, so the ranks do not need ``__main__``: its ``__file__``
    is removed and ``__spec__`` set to None while the processes start, then both are restored.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__spec__ = None  # read unconditionally by multiprocessing
        ctx = torch.multiprocessing.spawn(fn, args=args, nprocs=nprocs, join=False)
    finally:
        if main is not None:
            main.__dict__.update(saved)
            if "__spec__" not in saved:
                main.__dict__.pop("__spec__", None)
    while not ctx.join():
        pass


def die_with_parent() -> None:
    """Linux: SIGKILL this rank when its launcher dies, so a killed job (kill -9, scancel)
    leaves no orphaned ranks that keep training and writing into the output folder. (torch's
    spawn already asks for SIGINT, but a rank blocked in a collective or in C++ code does not
    act on SIGINT until it returns to Python; SIGKILL ends it at once.)"""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: nothing to do
        pass


def shard_plan(plan: list[list], rank: int, world_size: int) -> list[list]:
    """Rank ``rank``'s contiguous, disjoint slice of every batch of ``plan``.

    Equal shard sizes are required: DDP averages gradients with equal weights, which equals the
    full-batch gradient only when every rank holds the same number of samples.
    """
    out = []
    for b in plan:
        if len(b) % world_size:
            raise ValueError(f"batch_size {len(b)} must be divisible by world_size {world_size}")
        k = len(b) // world_size
        out.append(b[rank * k : (rank + 1) * k])
    return out


def dice_sums(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class soft-Dice intersection and denominator summed over batch and voxels (the same
    quantities as :func:`ctseg.training.losses.soft_dice_loss`)."""
    n_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, n_classes).movedim(-1, 1).float()
    dims = (0, *range(2, logits.ndim))
    return (probs * onehot).sum(dims), probs.sum(dims) + onehot.sum(dims)


def dice_from_sums(inter: torch.Tensor, denom: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    dice = (2 * inter + eps) / (denom + eps)
    fg = dice[1:] if dice.numel() > 1 else dice
    return 1.0 - fg.mean()


class GlobalBatchDiceCELoss(nn.Module):
    """``w_dice * soft Dice + w_ce * CE`` of the *whole* (all-rank) batch, for DDP.

    ``forward`` returns ``(loss_for_backward, global_loss_value)``. Each rank's Dice sums are
    replaced by the all-reduced sums, keeping the local autograd path
    (``local + (total - local).detach()``); the Dice term is scaled by the world size because
    DDP divides the summed gradients by it. Cross entropy is a mean over equal-size shards, so
    DDP's gradient average already is the full-batch gradient.
    """

    def __init__(self, w_dice: float, w_ce: float, world_size: int):
        super().__init__()
        self.w_dice, self.w_ce, self.world_size = float(w_dice), float(w_ce), int(world_size)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ce = F.cross_entropy(logits.float(), target)
        inter, denom = dice_sums(logits, target)
        local = torch.cat([inter, denom, ce.reshape(1)]).detach()
        total = local.clone()
        if self.world_size > 1:
            dist.all_reduce(total)
        c = inter.numel()
        g_inter = inter + (total[:c] - inter.detach())
        g_denom = denom + (total[c : 2 * c] - denom.detach())
        dice = dice_from_sums(g_inter, g_denom)
        backward = self.w_ce * ce + self.w_dice * self.world_size * dice
        value = self.w_ce * total[-1] / self.world_size + self.w_dice * dice.detach()
        return backward, value


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (float64), e.g. validation loss/Dice sums and counts."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.cpu().tolist()
