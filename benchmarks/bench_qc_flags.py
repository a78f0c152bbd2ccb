"""QC flag rates on good and on deliberately bad labellings of the default phantoms.

"Good" is each phantom's true labelling (T1-L5, 4 mm, the default cohort's grid). "Bad" are
the errors a vertebra network makes, applied to that truth: two neighbouring levels swapped, a
middle level missing, a level with half its voxels lost, the posterior arch of a level given
to the next one, and every level labelled one too high (T1 -> C7 ... L5 -> L4). Prints, per
kind, how many of the cases ``ctseg.formats.qc.quality_flags`` flags and with which flags.

    .venv/bin/python benchmarks/bench_qc_flags.py [--seeds 10]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
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
