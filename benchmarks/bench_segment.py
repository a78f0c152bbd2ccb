"""``ctseg segment`` on a 512 x 512 x 300 CT at 0.8 mm, and its sliding window against MONAI's.

1. Wall time and peak memory of the whole command (read, canonical orientation, resampling,
   sliding window, probability resampling onto the 0.8 mm grid, every standard output) in a
   child process, as a user runs it. Goal: <= 30 s and <= 4 GB on a 2-core CPU.
2. The sliding-window step alone on the working-grid volume, ours against
   ``monai.inferers.sliding_window_inference`` driving the same model with the same window,
   overlap 0.5 and Gaussian weighting (sigma = window / 8), same run: ratio and max |diff|.

Usage: python benchmarks/bench_segment.py [--model results/models/vert3d/model.pt]
(without a trained model a package of the default vert3d architecture with random weights is
used: the work per voxel is the same). MONAI: pip install --no-deps monai==1.6.1.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]


def phantom_ct(path: Path) -> None:
    from ctseg.phantom import PhantomParams, generate

    p = PhantomParams(
        shape=(512, 512, 300), spacing_mm=(0.8, 0.8, 0.8), first_level="T9", last_level="L3"
    )
    sitk.WriteImage(generate(5, p, progress=True).image("hu"), str(path))


def random_package(path: Path) -> None:
    import yaml

    from ctseg.core.config import ExperimentConfig
    from ctseg.inference.package import make_plan, save_package
    from ctseg.models import build_model

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    exp = ExperimentConfig.from_dict(cfg["experiments"]["vert3d"], "vert3d")
    cube = cfg["cubes"][exp.cube]
    meta = {
        "task": "vertebrae", "dim": 3, "n_classes": len(exp.class_ids), "class_ids": exp.class_ids,
        "spacing_mm": cube["spacing_mm"], "patch": cube["patch"], "hu_window": [-1000, 2000],
        "model_kwargs": exp.model_kwargs(), "orientation": "LPS",
    }  # fmt: skip
    torch.manual_seed(0)
    save_package(
        path,
        build_model(exp.model_kwargs(), meta["n_classes"]),
        exp.to_dict(),
        make_plan(meta, exp.to_dict()),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--model", type=Path, default=REPO / "results" / "models" / "vert3d" / "model.pt"
    )
    ap.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "ctseg_bench_segment"
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ct_path = args.work / "ct_512x512x300_0.8mm.nii.gz"
    if not ct_path.is_file():
        t0 = time.perf_counter()
        phantom_ct(ct_path)
        print(f"phantom generated in {time.perf_counter() - t0:.1f} s")
    model = args.model
    if not model.is_file():
        model = args.work / "random_vert3d.pt"
        random_package(model)
        print(f"no trained model at {args.model}: a random-weight package of the same network")

    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ctseg.cli", "segment", str(ct_path), "--model", str(model), "--out", str(args.work / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    if proc.returncode:
        sys.exit(proc.stderr)
    print(
        f"ctseg segment 512x512x300 @ 0.8 mm: {wall:.1f} s wall, peak RSS {peak_gb:.2f} GB (goal <= 30 s, <= 4 GB)"
    )

    # the sliding window alone, against MONAI on the same working-grid volume
    from ctseg.core.normalise import hu_to_float
    from ctseg.core.orientation import to_canonical
    from ctseg.core.resample import resample_to_spacing
    from ctseg.inference.package import load_package
    from ctseg.inference.sliding import sliding_window_logits

    net, plan = load_package(model)
    ct = to_canonical(sitk.ReadImage(str(ct_path)))
    work = resample_to_spacing(
        sitk.Cast(ct, sitk.sitkFloat32), plan["spacing_mm"], is_label=False, default=-1000.0
    )
    image = hu_to_float(sitk.GetArrayFromImage(work), plan["hu_window"])
    patch = tuple(reversed(plan["patch"]))
    t0 = time.perf_counter()
    ours = sliding_window_logits(net, image, patch, plan["n_classes"])
    t_ours = time.perf_counter() - t0
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print("MONAI not installed (pip install --no-deps monai==1.6.1): peer skipped")
        return
    x = torch.from_numpy(image)[None, None]
    t0 = time.perf_counter()
    with torch.no_grad():
        theirs = sliding_window_inference(
            x,
            patch,
            1,
            net,
            overlap=0.5,
            mode="gaussian",
            sigma_scale=0.125,
            padding_mode="constant",
            cval=0.0,
        )[0].numpy()
    t_monai = time.perf_counter() - t0
    print(
        f"sliding window on {image.shape} (z, y, x) @ {plan['spacing_mm']} mm, patch {patch}: ours {t_ours:.2f} s, "
        f"MONAI {t_monai:.2f} s -> {t_monai / t_ours:.2f}x; same arg-max on "
        f"{(ours.argmax(0) == theirs.argmax(0)).mean() * 100:.2f} % of voxels, max |logit diff| {np.abs(ours - theirs).max():.3g}"
    )


if __name__ == "__main__":
    main()
