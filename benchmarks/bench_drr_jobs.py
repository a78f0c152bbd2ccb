"""Benchmark: the `drr` rule as one job per view, one per case, and one per case reading once.

Each Snakemake job is a fresh Python process that imports torch, SimpleITK and ctseg and
reads the case's CT before rendering anything. With the default config's two small views
(128 px, 3.2 mm) the rendering itself is a fraction of a second, so per-view jobs paid the
start-up once per view. This runs, on a phantom CT of the default cohort's size, what each
layout's jobs run (a new interpreter per job, ``ctseg.drr.run_drr`` per view, writing the
same files), alternating the layouts ``--repeats`` times, and prints the best wall time of
each and their ratios. The third layout is the rule's code now: one job per case calling
``ctseg.drr.run_drr_views``, which reads the CT, labels and metal once and builds the
attenuation volume once for every view, against the second's ``run_drr`` per view.

Usage: ``python benchmarks/bench_drr_jobs.py [--views 2] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from ctseg.phantom import PhantomParams, generate

JOB = """
import sys
from pathlib import Path
from ctseg.drr import DrrOutputs, run_drr, run_drr_views
ct, labels, out, once = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
names = sys.argv[5:]
views = [dict(name=n, angle_deg=90 * i, sdd_mm=1000, sid_mm=750, size_px=128, spacing_mm=3.2)
         for i, n in enumerate(names)]
outs = [DrrOutputs(out / f"{n}.nii.gz", out / f"{n}_label.nii.gz", out / f"{n}.png") for n in names]
if once == "1":
    run_drr_views(ct, labels, None, views, outs, device="cpu")
else:
    for view, o in zip(views, outs):
        run_drr(ct, labels, None, view, o.nii, o.label_nii, o.png, device="cpu")
"""


def run_jobs(ct: Path, labels: Path, out: Path, groups: list[list[str]], once: bool) -> float:
    """Wall time of running each group of views as one fresh interpreter, one after another."""
    start = time.perf_counter()
    for names in groups:
        subprocess.run(
            [sys.executable, "-c", JOB, str(ct), str(labels), str(out), str(int(once)), *names],
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    names = [f"v{i}" for i in range(args.views)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # about the default cohort's median case: 120 x 120 x 110 voxels of 3.4 mm
        ph = generate(7, PhantomParams(shape=(120, 120, 110), spacing_mm=(3.4, 3.4, 3.4)))
        ct, labels = tmp / "ct.nii.gz", tmp / "labels.nii.gz"
        sitk.WriteImage(ph.image("hu"), str(ct))
        sitk.WriteImage(ph.image("labels"), str(labels))
        layouts = {
            "per view": ([[n] for n in names], False),
            "per case": ([names], False),
            "per case, read once": ([names], True),
        }
        best = dict.fromkeys(layouts, float("inf"))
        for _ in range(args.repeats):
            for layout, (groups, once) in layouts.items():
                out = tmp / layout.replace(" ", "_").replace(",", "")
                out.mkdir(exist_ok=True)
                best[layout] = min(best[layout], run_jobs(ct, labels, out, groups, once))
    for layout, t in best.items():
        print(f"{layout:20s} {t:6.2f} s for {args.views} views (best of {args.repeats})")
    print(f"ratio per view / per case: {best['per view'] / best['per case']:.2f}")
    print(
        f"ratio per case / per case read once: {best['per case'] / best['per case, read once']:.2f}"
    )


if __name__ == "__main__":
    main()
