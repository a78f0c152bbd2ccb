"""One CPU training step of each segmentation experiment of a config, plain against its variants.

For every trained segmentation experiment of the config (default ``config.yaml``: vert3d,
vert2d, metal2d, the DRR models) at its real batch and input shape (the cube's patch for 3D,
one slice of it along ``slice_axis`` for 2D, the DRR view for ``bone_drr``), times forward +
backward + AdamW step in float32 (the trainer without ``cpu_bf16``), bf16 autocast (the
trainer with ``cpu_bf16: true``), channels-last memory format, and both together. Variants run
interleaved, round after round, so that load from other jobs on a shared machine falls on all
of them alike; prints the median ms per step and the ratio to float32, measured in this run.
``--compile`` adds torch.compile (slow start). The localiser's stages are in
``bench_localiser_step.py``.

    .venv/bin/python benchmarks/bench_train_step.py [--config config.yaml] [--rounds 5]
        [--threads 1] [--only vert3d vert2d]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from ctseg.core.config import ExperimentConfig
from ctseg.models import build_model
from ctseg.training.losses import DiceCELoss
from ctseg.training.precision import cpu_has_bf16

ROOT = Path(__file__).resolve().parents[1]
AXES = {"axial": 0, "coronal": 1, "sagittal": 2}  # index of the [z, y, x] axis a slice fixes


def input_shape(exp: ExperimentConfig, cfg: dict) -> tuple[int, ...]:
    """``[batch, 1, ...]`` of one training batch of ``exp``."""
    if exp.task == "bone_drr":
        size = int(cfg["drr"]["views"][0]["size_px"])
        return (exp.batch, 1, size, size)
    zyx = list(reversed(cfg["cubes"][exp.cube]["patch"]))
    if exp.dim == 2:
        del zyx[AXES[exp.slice_axis]]
    return (exp.batch, 1, *zyx)


def make_step(model, x, y, autocast):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(0.5, 0.5)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        opt.step()

    return step


def variants(exp: ExperimentConfig, shape, compile_: bool) -> dict:
    n_classes = len(exp.class_ids)
    x = torch.rand(*shape)
    y = torch.randint(0, n_classes, (shape[0], *shape[2:]))
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    fmt = torch.channels_last_3d if len(shape) == 5 else torch.channels_last

    def fresh(channels_last=False):
        torch.manual_seed(0)
        m = build_model(exp.model_kwargs(), n_classes)
        return m.to(memory_format=fmt) if channels_last else m

    out = {
        "fp32": make_step(fresh(), x, y, nullcontext),
        "channels-last": make_step(fresh(True), x.to(memory_format=fmt), y, nullcontext),
    }
    if cpu_has_bf16():
        out["bf16"] = make_step(fresh(), x, y, bf16)
        out["bf16 + channels-last"] = make_step(fresh(True), x.to(memory_format=fmt), y, bf16)
    if compile_:
        out["torch.compile"] = make_step(torch.compile(fresh()), x, y, nullcontext)
        if cpu_has_bf16():
            out["bf16 + torch.compile"] = make_step(torch.compile(fresh()), x, y, bf16)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--rounds", type=int, default=5, help="timed steps per variant")
    ap.add_argument("--threads", type=int, default=1, help="the workflow trains on 1 thread")
    ap.add_argument("--only", nargs="*", default=None, help="experiment names")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    print(
        f"training step, {args.threads} thread(s), native CPU bf16: {cpu_has_bf16()}, "
        f"median of {args.rounds} interleaved rounds"
    )
    for name, d in cfg["experiments"].items():
        exp = ExperimentConfig.from_dict(d, name)
        if exp.task == "centroids" or exp.pretrained or (args.only and name not in args.only):
            continue
        shape = input_shape(exp, cfg)
        steps = variants(exp, shape, args.compile)
        times = {k: [] for k in steps}
        for step in steps.values():  # warm-up (oneDNN primitive creation, compile)
            step()
            step()
        for _ in range(args.rounds):
            for k, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[k].append((time.perf_counter() - t0) * 1000)
        base = statistics.median(times["fp32"])
        print(f"{name}: {exp.model} base {exp.base_width} depth {exp.depth}, input {list(shape)}")
        for k, v in times.items():
            ms = statistics.median(v)
            print(f"  {k:22s} {ms:8.1f} ms/step   {ms / base:5.2f} of fp32")


if __name__ == "__main__":
    main()
