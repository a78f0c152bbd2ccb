"""Vertebra models on held-out draws with pedicle screws: the CT as it is against the CT with
its metal filled (``predict_metal_fill_hu``, :func:`ctseg.metal.fill_metal`), same run.

Draws come from the default population and its robustness families (``config.yaml`` and
``config.robustness.yaml``), seeds ``--seeds-from`` onwards, one family after the other; only
draws with screws are kept, plus ``--implants`` draws of the implants family. Each is named
by the run's localiser (as ``ctseg segment`` does) and segmented by each vertebra model twice;
prints foreground and mean level Dice per draw and the means, and how many draws the fill made
better or worse.

    .venv/bin/python benchmarks/bench_metal_fill.py --models results/models [--seeds-from 27001]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ctseg import phantom
from ctseg.inference.package import load_package
from ctseg.inference.predict import predict_volume
from ctseg.localisation.population_experiment import family_config
from ctseg.localisation.predict import load_localiser, predict_centroids
from ctseg.metal import fill_metal
from ctseg.phantom.population import case_params


def dice(p: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(foreground Dice, mean Dice over the true levels)."""
    fg = 2 * ((p > 0) & (t > 0)).sum() / max((p > 0).sum() + (t > 0).sum(), 1)
    lv = [
        2 * ((p == v) & (t == v)).sum() / ((p == v).sum() + (t == v).sum())
        for v in np.unique(t)
        if v
    ]
    return float(fg), float(np.mean(lv))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="results/models", help="a run's models folder")
    ap.add_argument("--experiments", nargs="+", default=["vert3d", "vert2d"])
    ap.add_argument("--seeds-from", type=int, default=27001)
    ap.add_argument("--draws", type=int, default=120, help="population draws to look through")
    ap.add_argument("--implants", type=int, default=3, help="implants-family draws added")
    ap.add_argument("--fill-hu", type=float, default=250.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.models)
    loc = load_localiser(root / "centroids" / "model.pt", "cpu")
    models = {e: load_package(root / e / "model.pt", torch.device("cpu")) for e in args.experiments}
    cfg = family_config()
    fams = list(cfg["families"])
    cases = []
    for s in range(args.seeds_from, args.seeds_from + args.draws):
        fam = fams[(s - args.seeds_from) % len(fams)]
        if fam != "implants" and case_params(cfg, f"{fam}{s}", s, fam)["implants"]:
            cases.append((fam, s))
    cases += [("implants", args.seeds_from + 900 + j) for j in range(args.implants)]
    scores = {e: {"raw": [], "filled": []} for e in models}
    for fam, seed in cases:
        name = f"{fam}{seed}"
        params = case_params(cfg, name, seed, fam)
        ph = phantom.generate(seed, params)
        ct = ph.image("hu")
        truth = sitk.GetArrayFromImage(ph.image("labels"))
        pts = predict_centroids(loc, ct)
        filled = fill_metal(ct, args.fill_hu)
        line = [f"{name:22s} screws {','.join(params['implants']):16s}"]
        for e, (model, meta) in models.items():
            meta = {k: v for k, v in meta.items() if k != "predict_metal_fill_hu"}
            for tag, img in (("raw", ct), ("filled", filled)):
                lab = sitk.GetArrayFromImage(
                    predict_volume(model, meta, img, device="cpu", centroids=pts)
                )
                scores[e][tag].append(dice(lab, truth))
            (a, b), (c, d) = scores[e]["raw"][-1], scores[e]["filled"][-1]
            line.append(f"{e} {a:.3f}/{b:.3f} -> {c:.3f}/{d:.3f}")
        print("  ".join(line), flush=True)
    print(f"{len(cases)} draws with screws (foreground / level Dice, as is -> metal filled):")
    for e, s in scores.items():
        raw, fil = np.array(s["raw"]), np.array(s["filled"])
        diff = fil[:, 0] - raw[:, 0]
        print(
            f"  {e}: {raw[:, 0].mean():.4f} / {raw[:, 1].mean():.4f} -> "
            f"{fil[:, 0].mean():.4f} / {fil[:, 1].mean():.4f}; "
            f"{(diff > 0.001).sum()} better, {(diff < -0.001).sum()} worse (worst {diff.min():+.3f})"
        )


if __name__ == "__main__":
    main()
