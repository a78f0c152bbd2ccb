"""Benchmark: ``ctseg.ingest.volume.read_image`` vs SimpleITK's ImageSeriesReader on the same series.

Reads the shared real series (20 JPEG 2000 slices, 512x512) and a 300-slice phantom series
(uncompressed, written to a temp dir) with both readers in the same run, several repeats each,
and prints the minimum times and their ratio. The SimpleITK side includes
``GetGDCMSeriesFileNames`` (its own sorting), as a user would call it. Voxels and geometry
must be identical, or the script fails.

    .venv/bin/python benchmarks/bench_read.py [--repeats 5] [--slices 300] [--size 256]

Goal: ratio <= 1.0 (read_image also checks every header, orders by position and reports).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.ingest.volume import read_image

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ct_dicom_series"


def _sitk_read(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _ours(folder: Path) -> sitk.Image:
    return read_image(folder, progress=False)[0]


def _best(fn, folder: Path, repeats: int) -> tuple[float, sitk.Image]:
    best, img = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        img = fn(folder)
        best = min(best, time.perf_counter() - t0)
    return best, img


def compare(name: str, folder: Path, repeats: int) -> float:
    # interleave warm-up so both readers see a warm file cache
    _ours(folder)
    _sitk_read(folder)
    t_ref, ref = _best(_sitk_read, folder, repeats)
    t_ours, ours = _best(_ours, folder, repeats)
    a, b = sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(ref)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.array_equal(a, b), f"{name}: voxels differ"
    assert np.allclose(ours.GetSpacing(), ref.GetSpacing()) and np.allclose(
        ours.GetOrigin(), ref.GetOrigin()
    )
    assert np.allclose(ours.GetDirection(), ref.GetDirection())
    ratio = t_ours / t_ref
    print(
        f"{name:<28} {a.shape!s:<18} sitk {t_ref:7.3f} s   read_image {t_ours:7.3f} s   ratio {ratio:5.2f}x"
    )
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=256, help="rows = cols of the phantom series")
    args = ap.parse_args()
    ratios = []
    if REAL.is_dir():
        ratios.append(compare("real (JPEG 2000, 20 slices)", REAL, args.repeats))
    else:
        print(f"skipping real series: {REAL} not found")
    from ctseg.ingest.dicomwrite import write_dicom_series
    from ctseg.phantom import generate

    ph = generate(
        11,
        {
            "shape": [args.size, args.size, args.slices],
            "spacing_mm": [1.6, 1.6, 1.5],
            "noise_hu": 20.0,
        },
        progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        write_dicom_series(ph.hu, ph.spacing, ph.origin, ph.direction, folder, seed=11)
        ratios.append(compare(f"phantom ({args.slices} slices)", folder, args.repeats))
    print("max ratio", f"{max(ratios):.2f}x", "(goal <= 1.0x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
