"""Entry point of training: one experiment -> model.pt, history.tsv, loss.png.

Chooses how to run the :class:`~ctseg.training.trainer.Trainer`: in this process, as one rank of
a process group someone else launched (torchrun), or as one spawned data-parallel rank per
visible GPU (``world_size``; ``batch_size`` must divide by it so each step equals the
single-process step).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from ctseg.core.config import ExperimentConfig
from ctseg.core.device import resolve_device
from ctseg.core.errors import ConfigError
from ctseg.training.distributed import (
    die_with_parent,
    free_port,
    resolve_backend,
    resolve_world_size,
    spawn_ranks,
)
from ctseg.training.trainer import Trainer, in_process_group, set_threads


def train_experiment(
    experiment: dict | ExperimentConfig,
    train_data: dict,
    val_data: dict,
    out_dir: Path,
    *,
    seed: int,
    device: str = "auto",
    threads: int | None = None,
    stage: str | None = None,
) -> None:
    """Train ``experiment`` and write ``model.pt``, ``history.tsv``, ``loss.png`` in ``out_dir``.

    ``stage``: for a centroid localiser, train only that stage
    (:func:`ctseg.core.config.localiser_stages`; the workflow's ``train_stage`` jobs);
    other tasks have no stages.

    ``train_data``: ``{"cube": path}`` (volume tasks) or ``{"cases": [...]}`` (bone_drr);
    ``val_data``: ``{"cases": [...]}``. The experiment's keys and defaults are those of
    :class:`ctseg.core.config.ExperimentConfig`.
    """
    exp = (
        experiment
        if isinstance(experiment, ExperimentConfig)
        else ExperimentConfig.from_dict(experiment)
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if exp.task == "centroids":  # seed 004: trained from centroid files alone
        from ctseg.localisation.training import train_localiser

        train_localiser(
            train_data.get("cases", []), val_data.get("cases", []), out_dir,
            {"model": exp.model, **exp.localiser}, seed, device, threads, stage,
        )  # fmt: skip
        return
    if stage is not None:
        raise ConfigError(f"experiment {exp.name or '?'}: stage {stage!r} needs task centroids")
    dev = resolve_device(device)
    args = (exp, train_data, val_data, out_dir)
    if in_process_group():  # launched by torchrun or a caller
        world, rank = dist.get_world_size(), dist.get_rank()
        if dev.type == "cuda" and world > 1:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        Trainer(*args, seed=seed, device=dev, threads=threads, rank=rank, world=world).run()
        return
    world = resolve_world_size(exp, dev)
    if world == 1:
        Trainer(*args, seed=seed, device=dev, threads=threads).run()
        return
    if exp.batch % world:  # equal shards: DDP's gradient average is then the full-batch gradient
        raise ConfigError(
            f"experiment {exp.name}: batch_size {exp.batch} must be divisible by world_size {world}"
        )
    backend = resolve_backend(exp, dev)
    n_threads = set_threads(exp, threads)
    if dev.type == "cpu" and not (threads or exp.threads):
        n_threads = max(1, n_threads // world)  # ranks share the cores
    spawn_ranks(
        _spawned_rank,
        (
            world,
            backend,
            free_port(),
            (exp, train_data, val_data, str(out_dir), seed, dev.type, n_threads),
        ),
        world,
    )


def _spawned_rank(rank: int, world: int, backend: str, port: int, job: tuple) -> None:
    """Entry point of one spawned data-parallel rank (module level: spawn pickles it)."""
    die_with_parent()
    exp, train_data, val_data, out_dir, seed, dev_type, threads = job
    dev = torch.device("cuda", rank) if dev_type == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        Trainer(
            exp, train_data, val_data, Path(out_dir), seed=seed, device=dev, threads=threads,
            rank=rank, world=world,
        ).run()  # fmt: skip
    finally:
        dist.destroy_process_group()
