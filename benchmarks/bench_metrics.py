"""Time all per-label metrics of one case: ctseg.evaluation.metrics.label_metrics vs medpy, same run.

medpy is the reference implementation (its definitions are what ctseg reproduces), so the
peer is "medpy called per label the usual way": one boolean mask per label on the full grid,
then dc, jc, asd, assd, hd95, precision, recall. Values must agree to 1e-6 (asserted), and the
script prints the speed ratio. Goal: >= 10x on the large case.

    .venv/bin/python benchmarks/bench_metrics.py                 # 512x512x300 and a small pair
    .venv/bin/python benchmarks/bench_metrics.py --shape 300 256 256 --blobs 3
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from medpy.metric import binary as mb

from ctseg.evaluation.metrics import label_metrics

KEYS = ("dice", "jaccard", "asd_mm", "assd_mm", "hd95_mm", "precision", "recall")


def vertebra_pair(
    shape: tuple[int, int, int], n_blobs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Truth: a column of vertebra-like ellipsoids with a posterior arch along z; prediction: the
    same shifted by a voxel or two, with a perturbed surface (random erosion/dilation noise)."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    truth = np.zeros(shape, dtype=np.uint8)
    step = nz / (n_blobs + 1)
    cy, cx = ny // 2, nx // 2
    ry, rx = ny * 0.06, nx * 0.07
    rz = step * 0.35
    for i in range(n_blobs):
        cz = step * (i + 1)
        z0, z1 = int(cz - rz - 2), int(cz + rz + 3)
        y0, y1 = int(cy - 2.5 * ry), int(cy + ry + 3)
        x0, x1 = int(cx - rx - 3), int(cx + rx + 3)
        z, y, x = np.ogrid[z0:z1, y0:y1, x0:x1]
        body = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
        arch = (((z - cz) / (rz * 0.6)) ** 2 + ((y - (cy - 1.7 * ry)) / (0.8 * ry)) ** 2 <= 1) & (
            np.abs(x - cx) < rx * 0.9
        )
        sub = truth[z0:z1, y0:y1, x0:x1]
        sub[body | arch] = 20 + i
    pred = np.roll(truth, (1, -2, 1), axis=(0, 1, 2))
    # surface noise: drop some boundary voxels, add some outside
    from scipy import ndimage

    fg = pred > 0
    edge = fg & ~ndimage.binary_erosion(fg)
    drop = edge & (rng.random(shape, dtype=np.float32) < 0.3)
    pred[drop] = 0
    grow = ndimage.grey_dilation(pred, size=(1, 1, 3))
    add = (pred == 0) & (grow > 0) & (rng.random(shape, dtype=np.float32) < 0.2)
    pred[add] = grow[add]
    return pred, truth


def medpy_all(pred: np.ndarray, truth: np.ndarray, spacing, labels) -> list[dict]:
    rows = []
    for lab in labels:
        p, t = pred == lab, truth == lab
        rows.append(
            {
                "label": lab,
                "dice": mb.dc(p, t),
                "jaccard": mb.jc(p, t),
                "asd_mm": mb.asd(p, t, spacing, 1),
                "assd_mm": mb.assd(p, t, spacing, 1),
                "hd95_mm": mb.hd95(p, t, spacing, 1),
                "precision": mb.precision(p, t),
                "recall": mb.recall(p, t),
            }
        )
    return rows


def bench(shape: tuple[int, int, int], n_blobs: int, spacing, repeat: int) -> float:
    pred, truth = vertebra_pair(shape, n_blobs)
    labels = sorted(set(np.unique(truth).tolist()) - {0})
    t_ours = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ours = label_metrics(pred, truth, spacing)
        t_ours.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = medpy_all(pred, truth, spacing, labels)
    t_medpy = time.perf_counter() - t0
    assert [r["label"] for r in ours] == labels
    worst = 0.0
    for a, b in zip(ours, ref, strict=True):
        for k in KEYS:
            d = abs(a[k] - b[k])
            assert not math.isnan(d) and d <= 1e-6, (a["label"], k, a[k], b[k])
            worst = max(worst, d)
    best = min(t_ours)
    ratio = t_medpy / best
    print(
        f"shape {shape} ({np.prod(shape) / 1e6:.1f} Mvox), {len(labels)} labels, spacing {spacing}: "
        f"ctseg {best:.3f} s, medpy {t_medpy:.3f} s, ratio {ratio:.1f}x, max |diff| {worst:.2e}"
    )
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], help="z y x")
    ap.add_argument("--blobs", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    spacing = (1.0, 0.7421875, 0.7421875)
    small = bench((40, 64, 64), 3, spacing, repeat=5)
    large = bench(tuple(args.shape), args.blobs, spacing, repeat=args.repeat)
    print(
        f"goal >= 10x: small {small:.1f}x, large {large:.1f}x -> {'met' if large >= 10 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
