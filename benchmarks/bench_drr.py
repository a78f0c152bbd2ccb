"""Benchmark: ctseg's DRR ray caster against DiffDRR (Siddon, trilinear) and nanodrr.

Renders the same 256x256 AP view (sdd 1000 mm, sid 750 mm, 2 mm pixels) of a phantom CT of
122x101x112 voxels at 3 mm (``ctseg.phantom.generate``) and of the same attenuation volume
resampled to 256^3, with every renderer in the same run, on the same attenuation volume
(``ctseg.drr.attenuation.hu_to_mu`` at 70 keV, so the HU mapping is matched) and the same
rays: the peers get our source and pixel centres mapped into their world frames through the
volume's voxel index, so no convention (LPS/RAS, flips, isocentre) can differ. Prints best-of-N
wall times, time ratios (peer / ours) and the Pearson correlation of each peer's image with
ours, plus the ratio of means (DiffDRR's Siddon integrates exactly voxel boxes, so the scale
should agree within a few per cent).

Benchmark-only dependencies (not runtime ones), installed without their heavy extras::

    pip install --no-deps diffdrr==0.6.1 nanodrr==0.1.7 fastcore==2.2.39 kornia==0.9.0 \
        kornia_rs==0.2.0 roma==1.8.0

(diffdrr's declared torchvision/timm/pyvista/seaborn dependencies are not needed for
``diffdrr.drr`` and ``diffdrr.data``; torchvision would replace the CPU torch.)

Usage: ``python benchmarks/bench_drr.py [--device auto] [--threads 1] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ctseg.core.device import resolve_device
from ctseg.drr.attenuation import hu_to_mu
from ctseg.drr.geometry import View, VolumeGeometry, pixel_centers, view_frame
from ctseg.drr.raycast import raycast

VIEW = {
    "name": "ap",
    "angle_deg": 0,
    "sdd_mm": 1000,
    "sid_mm": 750,
    "size_px": 256,
    "spacing_mm": 2.0,
}


def phantom_mu() -> sitk.Image:
    """Attenuation (1/mm) of a 122x101x112 phantom at 3 mm (synthetic fallback if absent)."""
    try:
        from ctseg.phantom import generate

        ph = generate(
            0, {"shape": [122, 101, 112], "spacing_mm": [3.0, 3.0, 3.0], "implants": ["L3"]}
        )
        hu = ph.image("hu")
    except ImportError:  # pragma: no cover - the phantom module is part of ctseg
        z, y, x = np.mgrid[-56:56, -50:51, -61:61].astype(np.float32)
        arr = np.where((x / 55) ** 2 + (y / 45) ** 2 < 1, 40.0, -1000.0)
        arr[(x**2 + (y - 20) ** 2) < 64] = 1200.0
        hu = sitk.GetImageFromArray(arr.astype(np.int16))
        hu.SetSpacing((3.0, 3.0, 3.0))
    mu = sitk.GetImageFromArray(hu_to_mu(sitk.GetArrayViewFromImage(hu), 70.0))
    mu.CopyInformation(hu)
    return mu


def resample_cube(img: sitk.Image, n: int = 256) -> sitk.Image:
    """The same volume on an n^3 grid covering the same extent (linear interpolation)."""
    size = np.array(img.GetSize())
    extent = size * np.array(img.GetSpacing())
    spacing = extent / n
    origin = np.array(img.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))) + spacing / 2
    return sitk.Resample(
        img,
        [n] * 3,
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        spacing.tolist(),
        img.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def round_robin(runners: dict, repeats: int, sync) -> dict[str, tuple[float, np.ndarray]]:
    """Best-of-N wall time of each renderer, interleaved round by round.

    The machine is shared: interleaving spreads other load evenly over the renderers, and the
    minimum is the least disturbed measurement. One warm-up call each first.
    """
    images, best = {}, {}
    for name, fn in runners.items():
        images[name] = np.asarray(fn(), dtype=np.float64)
        sync()
        best[name] = float("inf")
    for _ in range(repeats):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: (best[name], images[name]) for name in runners}


def rays_in_index_space(geom: VolumeGeometry, view: View) -> tuple[np.ndarray, np.ndarray]:
    """Our source and pixel centres as continuous voxel indices (x, y, z)."""
    frame = view_frame(view, geom.center)
    src = geom.world_to_index(frame.source[None])[0]
    pix = geom.world_to_index(pixel_centers(view, frame).reshape(-1, 3))
    return src, pix


def homog(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return idx @ affine[:3, :3].T + affine[:3, 3]


def setup_diffdrr(path: Path, geom: VolumeGeometry, view: View, renderer: str, dev):
    """A closure rendering our rays with DiffDRR on our attenuation volume."""
    from diffdrr.data import read
    from diffdrr.drr import DRR

    subject = read(str(path), orientation="AP")
    subject.density.set_data(subject.volume.data.to(torch.float32))  # our mu, not its own map
    kwargs = {}
    if renderer == "trilinear":
        kwargs["n_points"] = (
            int(
                np.ceil(
                    np.linalg.norm(np.array(geom.size) * geom.spacing) / (0.5 * min(geom.spacing))
                )
            )
            + 1
        )
    drr = DRR(
        subject,
        sdd=view.sdd_mm,
        height=view.rows,
        delx=view.spacing_mm[0],
        renderer=renderer,
    ).to(dev)
    affine = drr._affine[0].double().cpu().numpy()
    src_i, pix_i = rays_in_index_space(geom, view)
    source = torch.as_tensor(homog(affine, src_i[None]), dtype=torch.float32, device=dev)[None]
    target = torch.as_tensor(homog(affine, pix_i), dtype=torch.float32, device=dev)[None]

    def run():
        with torch.no_grad():
            img = drr.render(drr.density, source, target, **kwargs)
        return img.reshape(view.rows, view.cols).cpu()

    return run


def setup_nanodrr(path: Path, geom: VolumeGeometry, view: View, dev, n_samples: int):
    """A closure rendering our view with nanodrr (camera pose built from our frame)."""
    from nanodrr.data import Subject
    from nanodrr.drr import DRR
    from torchio import ScalarImage

    subject = Subject.from_filepath(str(path), convert_to_mu=False).to(dev)
    affine = np.asarray(ScalarImage(str(path)).affine, dtype=np.float64)
    frame = view_frame(view, geom.center)
    pts = np.stack(
        [frame.source, frame.source + frame.u, frame.source + frame.v, frame.source - frame.normal]
    )
    w = homog(affine, geom.world_to_index(pts))
    rt_inv = np.eye(4)
    rt_inv[:3, 0], rt_inv[:3, 1], rt_inv[:3, 2] = w[1] - w[0], w[2] - w[0], w[3] - w[0]
    rt_inv[:3, 3] = w[0]
    rt = torch.as_tensor(rt_inv, dtype=torch.float32, device=dev)[None]
    drr = DRR.from_carm_intrinsics(
        view.sdd_mm,
        view.spacing_mm[0],
        view.spacing_mm[1],
        0.0,
        0.0,
        view.rows,
        view.cols,
        dtype=torch.float32,
        device=dev,
    )

    def run():
        with torch.no_grad():
            return drr(subject, rt, n_samples=n_samples)[0, 0].cpu()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], help="peers to skip: siddon trilinear nanodrr")
    ap.add_argument("--sizes", nargs="*", default=["native", "256"], help="native and/or 256")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    view = View.from_dict(VIEW)
    print(f"device {dev}, torch threads {args.threads}, view {VIEW}")
    base = phantom_mu()
    with tempfile.TemporaryDirectory() as tmp:
        for which in args.sizes:
            img = base if which == "native" else resample_cube(base, int(which))
            path = Path(tmp) / f"mu_{which}.nii.gz"
            sitk.WriteImage(img, str(path))
            geom = VolumeGeometry.from_image(img)
            mu = sitk.GetArrayFromImage(img)
            print(f"\nvolume {img.GetSize()} voxels at {np.round(img.GetSpacing(), 3).tolist()} mm")
            step = 0.5 * min(geom.spacing)
            n_samples = int(np.ceil(np.linalg.norm(np.array(geom.size) * geom.spacing) / step))
            runners = {
                "ctseg": lambda mu=mu, geom=geom: raycast(
                    mu, geom, view, device=str(dev), progress=False
                ).line_integrals[0]
            }
            setups = [
                ("diffdrr-siddon", setup_diffdrr, ("siddon", dev)),
                ("diffdrr-trilinear", setup_diffdrr, ("trilinear", dev)),
                ("nanodrr", setup_nanodrr, (dev, n_samples)),
            ]
            for name, setup, extra in setups:
                if name.split("-")[-1] in args.skip:
                    continue
                try:
                    runners[name] = setup(path, geom, view, *extra)
                except Exception as exc:  # report and go on: one peer must not hide the others
                    print(f"{name}: setup failed: {type(exc).__name__}: {exc}")
            results = round_robin(runners, args.repeats, sync)
            t_ours, ours = results["ctseg"]
            print(f"{'renderer':<20}{'best s':>10}{'ratio':>9}{'pearson r':>12}{'mean ratio':>12}")
            for name, (t, img2) in results.items():
                r = float(np.corrcoef(ours.ravel(), img2.ravel())[0, 1])
                print(
                    f"{name:<20}{t:>10.3f}{t / t_ours:>9.2f}{r:>12.6f}{img2.mean() / ours.mean():>12.4f}"
                )


if __name__ == "__main__":
    main()
