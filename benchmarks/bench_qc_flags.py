"""QC flag rates on good and on deliberately bad labellings of the default phantoms.

"Good" is each phantom's true labelling (T1-L5, 4 mm, the default cohort's grid). "Bad" are
the errors a vertebra network makes, applied to that truth: two neighbouring levels swapped, a
middle level missing, a level with half its voxels lost, the posterior arch of a level given
to the next one, and every level labelled one too high (T1 -> C7 ... L5 -> L4). Prints, per
kind, how many of the cases ``ctseg.formats.qc.quality_flags`` flags and with which flags.

    .venv/bin/python benchmarks/bench_qc_flags.py [--seeds 10]

With ``--model`` (and ``--localiser`` for a foreground model) it judges a trained model's own
predictions instead: the robustness suite's 42 test draws (``cases.robustness.tsv``, families
of ``config.robustness.yaml``) and in-distribution draws of the default population (the
sheet's ph23-ph28 and ``--extra`` seeds from 7001), each segmented as ``ctseg segment`` does,
scored against its truth (foreground Dice, mean Dice over the true levels) and judged by QC;
prints one row per case and the flag rates on good (level Dice >= ``--good``) and bad ones.

    .venv/bin/python benchmarks/bench_qc_flags.py --model results/models/vert3d/model.pt \
        --localiser results/models/centroids/model.pt
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk

from ctseg.formats.qc import quality_flags
from ctseg.phantom import generate


def corruptions(lab: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    levels = sorted(int(v) for v in np.unique(lab) if v)
    mid = levels[2:-2]
    out = {"truth": lab.copy()}
    a = int(rng.choice(mid))
    x = lab.copy()
    x[lab == a], x[lab == a + 1] = a + 1, a
    out["swap"] = x
    x = lab.copy()
    x[lab == int(rng.choice(mid))] = 0
    out["drop"] = x
    a = int(rng.choice(mid))
    x = lab.copy()
    kk, jj, ii = np.nonzero(lab == a)
    lower = np.argsort(kk, kind="stable")[: len(kk) // 2]  # phantom z index runs superior
    x[kk[lower], jj[lower], ii[lower]] = 0
    out["half"] = x
    a = int(rng.choice(mid))
    x = lab.copy()
    kk, jj, ii = np.nonzero(lab == a)
    post = jj > np.median(jj) + 4  # phantom y index runs posterior
    x[kk[post], jj[post], ii[post]] = a + 1
    out["arch_to_next"] = x
    x = lab.copy()
    x[lab > 0] = lab[lab > 0] - 1
    out["shift_all"] = x
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


def model_predictions(args: argparse.Namespace) -> None:
    from pathlib import Path

    import pandas as pd
    import yaml

    from ctseg.formats.vertebra_stats import vertebra_statistics
    from ctseg.inference.segment import Segmenter
    from ctseg.localisation.regions import anatomy_rows
    from ctseg.phantom.population import case_params

    root = Path(__file__).resolve().parents[1]
    base = yaml.safe_load((root / "config.yaml").read_text())
    rob = yaml.safe_load((root / "config.robustness.yaml").read_text())
    pcfg = {**base["phantom"], "families": rob["phantom"]["families"]}
    sheet = pd.read_csv(root / "cases.robustness.tsv", sep="\t", dtype=str).fillna("")
    cases = [(r.case, int(r.location), r.family) for r in sheet.itertuples() if r.split == "test"]
    cases += [(f"id{s}", s, "") for s in range(7001, 7001 + args.extra)]
    seg = Segmenter(args.model, device="cpu", localiser=args.localiser)
    rows = []
    for name, seed, fam in cases:
        ph = generate(seed, case_params(pcfg, name, seed, fam))
        ct, truth = ph.image("hu"), ph.image("labels")
        pred = seg.segment(ct)
        p, t = sitk.GetArrayFromImage(pred.labels), sitk.GetArrayFromImage(truth)
        levels = [int(v) for v in np.unique(t) if v]
        lvl = float(np.mean([dice(p == v, t == v) for v in levels])) if levels else 0.0
        st = vertebra_statistics(pred.labels, ct)
        anatomy = None
        if seg.localiser is not None:  # the QC's anatomy check, as ctseg segment runs it
            pts = [{"label": r["label"], "world": r["centroid"]} for r in st["levels"]]
            anatomy = anatomy_rows(seg.localiser, ct, pts)
        qc = quality_flags(
            pred.labels,
            ct,
            trained_ids=seg.trained_ids,
            stats=st,
            confidence_measures=pred.confidence or None,
            relabelled_fraction=pred.relabelled_fraction,
            anatomy=anatomy,
        )
        flags = sorted({f["name"] for f in qc["flags"]})
        rows.append((lvl >= args.good, set(flags)))
        print(
            f"{name:7s} {fam or 'in-distribution':15s} foreground Dice {dice(p > 0, t > 0):.3f} "
            f"level Dice {lvl:.3f} levels {qc['measures']['levels']} flags {flags}",
            flush=True,
        )
        if args.details:
            for f in qc["flags"]:
                print(f"    {f['name']}: {f['reason']}", flush=True)
    for good in (True, False):
        hits = [f for g, f in rows if g == good]
        what = f"good (level Dice >= {args.good})" if good else "bad"
        naming = ("anatomy", "unanchored")
        print(
            f"{what}: {sum(bool(f) for f in hits)}/{len(hits)} flagged, "
            + ", ".join(f"{sum(k in f for f in hits)} by {k}" for k in naming)
            + f", {sum(bool(f - set(naming)) for f in hits)} by the others"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--model", default=None, help="judge this model package's predictions")
    ap.add_argument("--localiser", default=None, help="its centroid localiser (foreground models)")
    ap.add_argument("--extra", type=int, default=12, help="in-distribution draws beyond ph23-ph28")
    ap.add_argument("--good", type=float, default=0.9, help="level Dice of a good prediction")
    ap.add_argument("--details", action="store_true", help="print each flag's reason")
    args = ap.parse_args()
    if args.model:
        model_predictions(args)
        return
    rng = np.random.default_rng(0)
    flagged: dict[str, list[bool]] = {}
    names: dict[str, dict[str, int]] = {}
    for seed in range(1, args.seeds + 1):
        ph = generate(seed)
        ref, ct = ph.image("labels"), ph.image("hu")
        for kind, arr in corruptions(ph.labels, rng).items():
            img = sitk.GetImageFromArray(arr)
            img.CopyInformation(ref)
            qc = quality_flags(img, ct)
            flagged.setdefault(kind, []).append(not qc["trusted"])
            for f in qc["flags"]:
                names.setdefault(kind, {})[f["name"]] = names.get(kind, {}).get(f["name"], 0) + 1
    for kind, hits in flagged.items():
        print(f"{kind:14s} flagged {sum(hits):2d}/{len(hits)}  {names.get(kind, {})}")


if __name__ == "__main__":
    main()
