"""The centroid localiser's training steps on the CPU: float32, bf16 autocast, bf16 channels-last.

Drives the real trainers of the default config's three stages (first stage on the whole
field of view at 8 mm, refiner on 32^3 patches at 3 mm, region network on 32^3 cubes at 5 mm)
on population draws of the default cohort, and times ``--steps`` steps of each (sampling,
forward, loss, backward, guarded AdamW step), float32, bf16 and bf16 with the networks and
batches channels-last (``channels_last``) in the same run, one thread (the workflow gives the
localiser's job one). Prints ms per step, the ratios to float32, and the default config's whole
training time per setting (steps x ms).

Usage: python benchmarks/bench_localiser_step.py [--steps 20] [--cases 4]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from ctseg.localisation.population_experiment import ROOT, cached_case
from ctseg.localisation.refine import RefinerTrainer
from ctseg.localisation.regions import RegionTrainer
from ctseg.localisation.training import LocaliserTrainer
from ctseg.training.precision import cpu_has_bf16


def _timed(step, n: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n * 1000


def stage_times(
    items: list[dict], cfg: dict, bf16: bool, steps: int, work: Path, channels_last: bool = False
) -> dict:
    cfg = {**copy.deepcopy(cfg), "cpu_bf16": bf16, "channels_last": channels_last}
    tag = f"{int(bf16)}{int(channels_last)}"
    first = LocaliserTrainer(items, [], work / f"first{tag}", cfg, seed=1, device="cpu")
    first.threads = 1
    first.setup()
    out = {"first stage": _timed(lambda: first.train_step(*first.sample_batch()), steps)}
    for name, cls in (("refiner", RefinerTrainer), ("regions", RegionTrainer)):
        sub = cls(
            items, first.cfg[name], work / f"{name}{tag}", 1, first.dev, first.autocast,
            channels_last,
        )  # fmt: skip

        out[name] = _timed(lambda sub=sub: sub.train_step(*sub.sample()), steps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cases", type=int, default=4, help="training draws of the default cohort")
    args = ap.parse_args()
    if not cpu_has_bf16():
        raise SystemExit("this CPU has no native bf16 (AVX512-BF16 / AMX): nothing to compare")
    torch.set_num_threads(1)
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    sheet = pd.read_csv(ROOT / "cases.tsv", sep="\t", dtype=str).fillna("")
    rows = [r for r in sheet.itertuples() if r.split == "train"][: args.cases]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        items = [
            cached_case(work / "cache", base["phantom"], r.case, int(r.location)) for r in rows
        ]
        cfg = base["experiments"]["centroids"]["localiser"]
        fp32 = stage_times(items, cfg, False, args.steps, work)
        bf16 = stage_times(items, cfg, True, args.steps, work)
        cl = stage_times(items, cfg, True, args.steps, work, channels_last=True)
    first = LocaliserTrainer(items, [], "-", cfg, seed=1).cfg
    total_steps = {
        "first stage": first["epochs"] * first["steps_per_epoch"] * first["ensemble"],
        "refiner": first["refiner"]["steps"],
        "regions": first["regions"]["steps"],
    }
    print(
        f"{'stage':<12} {'steps':>6} {'fp32 ms':>9} {'bf16 ms':>9} {'bf16+CL ms':>11} "
        f"{'bf16/fp32':>9} {'bf16+CL/bf16':>12}"
    )
    for k in fp32:
        print(
            f"{k:<12} {total_steps[k]:>6} {fp32[k]:>9.0f} {bf16[k]:>9.0f} {cl[k]:>11.0f} "
            f"{bf16[k] / fp32[k]:>9.2f} {cl[k] / bf16[k]:>12.2f}"
        )
    t32, t16, tcl = (sum(total_steps[k] * t[k] for k in t) / 60e3 for t in (fp32, bf16, cl))
    print(
        f"default config's training steps: fp32 {t32:.1f} min, bf16 {t16:.1f} min, "
        f"bf16 + channels-last {tcl:.1f} min (validation and case loading not included)"
    )


if __name__ == "__main__":
    main()
