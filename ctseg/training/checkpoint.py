"""Checkpoints that resume only the run they belong to, and the model file training writes.

A checkpoint holds only tensors, numbers, strings and containers (RNG states as tensors / JSON),
so it loads with ``torch.load(weights_only=True)``: no arbitrary unpickling. It carries a
fingerprint of everything that determines training (the training data's content, the validation
files, the experiment's training settings, the seed, the library's source): a rerun after any of
them changed starts from epoch 0, with a log line saying which part differs, instead of
"resuming" into the old weights.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_hash() -> str:
    """sha256 over the ctseg package's source files (the code that trains)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def fingerprint(*, experiment: dict, seed: int, data_files: list, val_files: list) -> dict:
    """The parts of a training run's identity, each a short hash (compared part by part)."""

    def files(paths):
        return hashlib.sha256(
            "\n".join(f"{p}:{file_sha256(p)}" for p in sorted(map(str, paths))).encode()
        ).hexdigest()

    return {
        "config": hashlib.sha256(
            json.dumps({"experiment": experiment, "seed": seed}, sort_keys=True).encode()
        ).hexdigest(),
        "training data": files(data_files),
        "validation data": files(val_files),
        "code": library_hash(),
    }


def experiment_hash(experiment: dict, seed: int, extra: dict) -> str:
    """One hash of a run's settings (for trainers whose data are not files, e.g. the localiser's
    in-memory cases; the segmentation trainer uses :func:`fingerprint`)."""
    blob = json.dumps(
        {"experiment": experiment, "seed": seed, **extra}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def fingerprint_mismatch(saved: dict | None, current: dict) -> list[str]:
    """Names of the fingerprint parts that differ (all of them when ``saved`` is missing)."""
    if not isinstance(saved, dict):
        return sorted(current)
    return sorted(k for k in current if saved.get(k) != current[k])


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
