"""Cube augmentation throughput: ctseg's fused pipeline vs volumentations-3D's own vs TorchIO.

Same transform set in all three (rotation up to 10 deg about each axis, isotropic scale
0.9-1.1, Gaussian noise, Gaussian blur, left-right flip; every transform applied to every
sample), on the same image/label pair, single-threaded, in one run. Prints samples/s and the
ratio of ctseg's pipeline to each peer. TorchIO is optional (``pip install torchio==1.2.1``).

volumentations-3D's own pipeline needs its workarounds to run at all: ``RandomScale`` gets an
``[H, W, D, 1]`` array and a pad + centre-crop back to the input shape, and its ``Blur`` (which
raises NameError) is replaced by ctseg's ``GaussianBlur``.

A last line times ``ctseg.training.cubes.build_cube`` end to end on the same pair written as NIfTI (read,
crop, augment, gzip-compressed chunked HDF5 write), for the rate a ``cube`` job actually gets.

Usage: ``python benchmarks/bench_cubes.py [--n 6] [--shape 112 64 64]``
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ctseg.training.augment import GaussianBlur, augment_pair, build_augmentation
from ctseg.training.cubes import build_cube


def phantom_pair(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.normal(0.33, 0.01, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    z, y, x = shape
    for k in range(8):
        sl = (
            slice(4 + k * (z - 8) // 8, 2 + (k + 1) * (z - 8) // 8),
            slice(y // 3, 2 * y // 3),
            slice(x // 3, 2 * x // 3),
        )
        lab[sl] = 8 + k
        img[sl] = 0.6
    return img, lab


def bench(fn, n: int) -> float:
    fn(0)  # warm-up (imports, caches)
    t = time.perf_counter()
    for i in range(1, n + 1):
        fn(i)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--shape", type=int, nargs=3, default=[112, 64, 64], help="z y x voxels")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    shape = tuple(args.shape)
    img, lab = phantom_pair(shape)
    rates: dict[str, float] = {}

    ours = build_augmentation(
        {
            "rotate_deg": [10, 10, 10],
            "scale": [0.9, 1.1],
            "p_affine": 1,
            "flip": True,
            "p_flip": 1,
            "blur_sigma": [0.3, 1.0],
            "p_blur": 1,
            "noise_std": [0.005, 0.02],
            "p_noise": 1,
        }
    )
    rates["ctseg (fused affine)"] = bench(lambda i: augment_pair(img, lab, ours, i), args.n)

    from volumentations import (
        CenterCrop,
        Compose,
        Flip,
        GaussianNoise,
        PadIfNeeded,
        RandomScale,
        Rotate,
    )

    vol = Compose(
        [
            Rotate((-10, 10), (-10, 10), (-10, 10), border_mode="constant", p=1),
            RandomScale([0.9, 1.1], p=1),
            PadIfNeeded((*shape, 1), border_mode="constant", p=1),
            CenterCrop((*shape, 1), p=1),
            GaussianBlur((0.3, 1.0), p=1),
            GaussianNoise((0.005**2, 0.02**2), p=1),
            Flip(axis=(2,), p=1),
        ],
        p=1.0,
    )

    def run_vol(i: int) -> None:
        random.seed(i)
        np.random.seed(i)
        out = vol(image=img[..., None], mask=lab[..., None])
        assert out["image"].shape[:3] == shape, out["image"].shape

    rates["volumentations-3D"] = bench(run_vol, args.n)

    try:
        import torchio as tio
    except ImportError:
        print("torchio not installed: skipping (pip install torchio==1.2.1)")
    else:
        tr = tio.Compose(
            [
                tio.RandomAffine(
                    scales=(0.9, 1.1),
                    degrees=10,
                    isotropic=True,
                    image_interpolation="linear",
                    default_pad_value=0,
                ),
                tio.RandomBlur(std=(0.3, 1.0)),
                tio.RandomNoise(std=(0.005, 0.02)),
                tio.RandomFlip(axes=(2,), flip_probability=1.0),
            ]
        )
        subject = tio.Subject(
            image=tio.ScalarImage(tensor=torch.from_numpy(img)[None]),
            label=tio.LabelMap(tensor=torch.from_numpy(lab.astype(np.int64))[None]),
        )

        def run_tio(i: int) -> None:
            torch.manual_seed(i)
            tr(subject)

        rates[f"TorchIO {tio.__version__}"] = bench(run_tio, args.n)

    print(f"shape (z, y, x) = {shape}, {args.n} samples each, 1 thread")
    base = rates["ctseg (fused affine)"]
    for name, r in rates.items():
        print(f"{name:28s} {r:7.2f} samples/s   ctseg / this = {base / r:5.2f}x")
    print(f"ctseg build_cube end to end  {cube_rate(img, lab, args.n):7.2f} samples/s")


def cube_rate(img: np.ndarray, lab: np.ndarray, n: int) -> float:
    """Samples/s of a whole ``build_cube`` (NIfTI read, crops, augmentation, HDF5 gzip)."""
    with tempfile.TemporaryDirectory() as tmp:
        ct = sitk.GetImageFromArray((img * 3000 - 1000).astype(np.float32))
        ct_path, lab_path = Path(tmp, "ct.nii.gz"), Path(tmp, "labels.nii.gz")
        sitk.WriteImage(ct, str(ct_path))
        lab_img = sitk.GetImageFromArray(lab)
        lab_img.CopyInformation(ct)
        sitk.WriteImage(lab_img, str(lab_path))
        item = {"case": "bench", "ct": str(ct_path), "labels": str(lab_path)}
        recipe = {
            "task": "vertebrae",
            "spacing_mm": [1.0, 1.0, 1.0],
            "patch": list(reversed(img.shape)),
            "copies": n - 1,
            "augment": {"p_affine": 1, "p_flip": 1, "p_blur": 1, "p_noise": 1},
        }
        t = time.perf_counter()
        build_cube([item], Path(tmp, "cube.h5"), recipe, seed=0)
        return n / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
