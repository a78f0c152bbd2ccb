"""One CPU training step of the default 3D vertebra U-Net, plain against its variants.

Variants measured in the same run (forward + backward + AdamW step on a batch of the default
cube's patches): fp32 (the trainer's default), channels-last-3D memory format, bfloat16
autocast, torch.compile, and 1 against all threads. Prints ms per step and the ratio to fp32.
Usage: python benchmarks/bench_train_step.py [--steps 8] [--classes 28] [--patch 32 32 64]
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from ctseg.models import build_model
from ctseg.training.losses import DiceCELoss


def time_steps(model, x, y, steps, *, autocast=None, warmup=2):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(0.5, 0.5)
    ctx = autocast or nullcontext

    def one():
        opt.zero_grad(set_to_none=True)
        with ctx():
            out = model(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--classes", type=int, default=28)
    ap.add_argument("--patch", type=int, nargs=3, default=[32, 32, 64], help="x y z voxels")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow start)")
    args = ap.parse_args()
    torch.manual_seed(0)
    exp = {"model": "unet3d", "base_width": 8, "depth": 4, "norm": "instance"}
    x = torch.rand(args.batch, 1, *reversed(args.patch))
    y = torch.randint(0, args.classes, (args.batch, *reversed(args.patch)))
    threads = torch.get_num_threads()
    results = {}

    def fresh():
        torch.manual_seed(0)
        return build_model(exp, args.classes)

    results["fp32"] = time_steps(fresh(), x, y, args.steps)
    m = fresh().to(memory_format=torch.channels_last_3d)
    results["channels_last_3d"] = time_steps(
        m, x.to(memory_format=torch.channels_last_3d), y, args.steps
    )
    results["bf16 autocast"] = time_steps(
        fresh(), x, y, args.steps, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    )
    torch.set_num_threads(1)
    results["fp32, 1 thread"] = time_steps(fresh(), x, y, args.steps)
    torch.set_num_threads(threads)
    if args.compile:
        results["torch.compile"] = time_steps(torch.compile(fresh()), x, y, args.steps, warmup=3)
    base = results["fp32"]
    print(
        f"train step, unet3d base 8 depth 4, {args.classes} classes, batch {args.batch}, patch {args.patch}, {threads} threads"
    )
    for k, v in results.items():
        print(f"  {k:18s} {v:8.1f} ms/step   {base / v:5.2f}x fp32")


if __name__ == "__main__":
    main()
