"""``ctseg segment`` on a 512 x 512 x 300 CT at 0.8 mm, and its sliding window against MONAI's.

1. Wall time and peak memory of the whole command (read, canonical orientation, resampling,
   sliding window, probability resampling onto the 0.8 mm grid, every standard output) in a
   child process, as a user runs it. Goal: <= 30 s and <= 4 GB on a 2-core CPU. Then the
   same with ``--float32`` (peak memory is the larger of the two).
2. The sliding-window step alone on the working-grid volume, ours against
   ``monai.inferers.sliding_window_inference`` driving the same model with the same window,
   overlap 0.5 and Gaussian weighting (sigma = window / 8), same run: ratio and max |diff|.
   Ours runs the precision the plan records (``cpu_bf16``: the forward pass in bf16 on a
   CPU with native bf16, as the model trained); MONAI is timed in float32 (its default) and
   inside the same ``torch.autocast("cpu", bfloat16)``, so the ratio that isolates the
   inferer is ours against MONAI with the same precision and batch.

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
    ap.add_argument(
        "--localiser",
        type=Path,
        default=None,
        help="centroid localiser for a foreground model (default: the model's sibling "
        "centroids/model.pt)",
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

    from ctseg.inference.package import load_package

    net, plan = load_package(model)
    cmd = [sys.executable, "-m", "ctseg.cli", "segment", str(ct_path), "--model", str(model), "--out", str(args.work / "out")]  # fmt: skip
    if plan.get("classes") == "foreground":  # levels named by the localiser's centroids
        loc = args.localiser or model.parent.parent / "centroids" / "model.pt"
        if not loc.is_file():
            sys.exit(f"a foreground model needs --localiser (no {loc})")
        cmd += ["--localiser", str(loc)]
    walls = {}
    for label, extra in (("", []), (" --float32", ["--float32"])):  # plan's precision first
        t0 = time.perf_counter()
        proc = subprocess.run(cmd + extra, capture_output=True, text=True)
        walls[label] = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(proc.stderr)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    print(
        f"ctseg segment 512x512x300 @ 0.8 mm: {walls['']:.1f} s wall, peak RSS {peak_gb:.2f} GB "
        f"(goal <= 30 s, <= 4 GB); with --float32 {walls[' --float32']:.1f} s"
    )

    # the sliding window alone, against MONAI on the same working-grid volume
    from ctseg.core.normalise import hu_to_float
    from ctseg.core.orientation import to_canonical
    from ctseg.core.resample import resample_to_spacing
    from ctseg.inference.downsample import working_image
    from ctseg.inference.sliding import default_batch, gaussian_importance, sliding_window_logits

    ct = sitk.Cast(to_canonical(sitk.ReadImage(str(ct_path))), sitk.sitkFloat32)
    t0 = time.perf_counter()
    work = resample_to_spacing(ct, plan["spacing_mm"], is_label=False, default=-1000.0)
    t_itk = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = working_image(ct, plan["spacing_mm"], default=-1000.0)
    t_fast = time.perf_counter() - t0
    diff = np.abs(sitk.GetArrayFromImage(work) - sitk.GetArrayFromImage(fast)).max()
    print(
        f"working grid ({plan['spacing_mm']} mm): resample_to_spacing {t_itk:.2f} s, "
        f"working_image {t_fast:.2f} s, max |HU diff| {diff:.3g}"
    )
    image = hu_to_float(sitk.GetArrayFromImage(work), plan["hu_window"])
    patch = tuple(reversed(plan["patch"]))
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print("MONAI not installed (pip install --no-deps monai==1.6.1): peer skipped")
        return
    from ctseg.training.precision import bf16_on_cpu

    weight = torch.from_numpy(gaussian_importance(patch))  # the same Gaussian for both
    batch = default_batch(patch)
    bf16 = bf16_on_cpu(torch.device("cpu"), bool(plan.get("cpu_bf16")))

    def ours(img: np.ndarray, cpu_bf16: bool = bf16) -> np.ndarray:
        return sliding_window_logits(net, img, patch, plan["n_classes"], cpu_bf16=cpu_bf16)

    def monai(img: np.ndarray, sw_batch: int, in_bf16: bool = False) -> np.ndarray:
        amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=in_bf16)
        with torch.no_grad(), amp:
            return sliding_window_inference(
                torch.from_numpy(img)[None, None], patch, sw_batch, net, overlap=0.5,
                mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0.0,
                roi_weight_map=weight,
            )[0].float().numpy()  # fmt: skip

    ours(image[: patch[0], : patch[1], : patch[2]])  # warm-up (oneDNN primitives)
    peers = {
        "ours": ours,
        "ours_f32": lambda im: ours(im, False),
        "monai_1": lambda im: monai(im, 1),
        "monai_b": lambda im: monai(im, batch),
    }
    if bf16:
        peers["monai_b_bf16"] = lambda im: monai(im, batch, True)
    runs = {k: [] for k in peers}
    for _ in range(2):  # interleaved, best of two: the machine is shared
        for name, fn in peers.items():
            t0 = time.perf_counter()
            out = fn(image)
            runs[name].append(time.perf_counter() - t0)
            if name == "ours_f32":
                a = out
            elif name == "monai_1":
                b = out
            elif name == "ours":
                a_plan = out
    t = {k: min(v) for k, v in runs.items()}
    print(
        f"sliding window on {image.shape} (z, y, x) @ {plan['spacing_mm']} mm, patch {patch}, "
        f"overlap 0.5, Gaussian sigma = patch / 8, batches of {batch}: ours "
        f"{t['ours']:.2f} s ({'bf16' if bf16 else 'float32'}, the plan's precision), "
        f"ours in float32 {t['ours_f32']:.2f} s"
    )
    print(
        f"  MONAI float32: {t['monai_1']:.2f} s at sw_batch_size 1 (its default) -> "
        f"{t['monai_1'] / t['ours']:.2f}x ours, {t['monai_b']:.2f} s at sw_batch_size {batch} -> "
        f"{t['monai_b'] / t['ours']:.2f}x ours, {t['monai_b'] / t['ours_f32']:.2f}x ours in float32"
    )
    if bf16:
        print(
            f"  MONAI in the same bf16 autocast, sw_batch_size {batch}: {t['monai_b_bf16']:.2f} s "
            f"-> {t['monai_b_bf16'] / t['ours']:.2f}x ours; ours bf16 against float32: same "
            f"arg-max on {(a_plan.argmax(0) == a.argmax(0)).mean() * 100:.3f} % of voxels"
        )
    print(
        f"  whole volume: same arg-max on {(a.argmax(0) == b.argmax(0)).mean() * 100:.2f} % of voxels, "
        f"max |logit diff| {np.abs(a - b).max():.3g} (window layouts differ: ours spreads the "
        "windows evenly, MONAI steps by patch / 2 and clamps the last; MONAI pads a short axis "
        "on both sides, ours at the end; instance norm makes a window's logits depend on it)"
    )
    # a volume on which both place the same windows: each axis a multiple of patch / 2, >= patch
    n = [max(p, (s // (p // 2)) * (p // 2)) for s, p in zip(image.shape, patch, strict=True)]
    sub = np.zeros(n, np.float32)
    k = [min(s, m) for s, m in zip(image.shape, n, strict=True)]
    sub[: k[0], : k[1], : k[2]] = image[: k[0], : k[1], : k[2]]
    d = np.abs(ours(sub, False) - monai(sub, 1)).max()  # float32 both
    print(f"  same windows ({tuple(n)}): max |logit diff| {d:.3g}")


if __name__ == "__main__":
    main()
