"""The QC's ``anatomy`` and ``unanchored`` checks on whole spines named N levels off, against
the true naming.

A spine named one level off is consecutive, evenly spaced and plausibly sized, so the
plausibility flags of ``ctseg.formats.qc`` pass it (0 of 50 in ``bench_qc_flags.py``). The
``anatomy`` flag asks the localiser's region network what each labelled vertebra looks like.
This benchmark takes held-out draws of every robustness family (the seeds and cache of
``ctseg.localisation.population_experiment``, never in a case sheet), names each draw's true
centroids correctly and shifted by -2, -1, +1 and +2 levels along the spine (levels shifted
past C1 or the sacrum are dropped), and prints per shift how many draws each flag catches
(``unanchored``: no anchor level -- C1, C2, C7, T1, T11, T12, L5, sacrum -- looks like itself).

    .venv/bin/python benchmarks/bench_qc_anatomy.py --localiser results/models/centroids/model.pt \
        [--cache /tmp/pexp/cache] [--per-family 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.core.labels import SPINE_ORDER
from ctseg.formats.qc import anatomy_flags
from ctseg.localisation import population_experiment as pe
from ctseg.localisation.predict import load_localiser
from ctseg.localisation.regions import anatomy_rows

#: The normal sequence (no T13, no L6): what a shifted naming steps along.
NORMAL = [v for v in SPINE_ORDER if v not in (25, 28)]


def shifted(centroids: list[dict], shift: int) -> list[dict]:
    """The same points named ``shift`` levels further down the spine (C1 -> C2 for +1);
    shift 0 is the true naming, transitional levels included."""
    out = []
    for c in centroids:
        lab = int(c["label"])
        if shift == 0:
            out.append({"label": lab, "world": [c["x"], c["y"], c["z"]]})
            continue
        if lab not in NORMAL:  # shifted: transitional levels dropped, their neighbours kept
            continue
        i = NORMAL.index(lab) + shift
        if 0 <= i < len(NORMAL):
            out.append({"label": NORMAL[i], "world": [c["x"], c["y"], c["z"]]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--localiser", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/pexp/cache"))
    ap.add_argument("--per-family", type=int, default=3)
    ap.add_argument("--seeds-from", type=int, default=7001)
    args = ap.parse_args()
    loc = load_localiser(args.localiser, "cpu")
    shifts = (0, -2, -1, 1, 2)
    kinds = ("anatomy", "unanchored")
    flagged = {s: 0 for s in shifts}
    by_kind = {(s, k): 0 for s in shifts for k in kinds}
    n = 0
    for it in pe.held_out_draws(args.cache, args.seeds_from, args.per_family):
        n += 1
        row = []
        for s in shifts:
            rows = anatomy_rows(loc, it["ct"], shifted(it["centroids"], s))
            got = {f["name"] for f in anatomy_flags(rows)}
            flagged[s] += bool(got)
            for name in got:
                by_kind[s, name] += 1
            row.append("".join(x[0].upper() for x in kinds if x in got) or ".")
        print(f"{it['case']:<22} {' '.join(f'{c:2s}' for c in row)}", flush=True)
    print(f"\n{n} draws; flagged (A anatomy, U unanchored; shift 0 = the true naming):")
    for s in shifts:
        each = ", ".join(f"{x} {by_kind[s, x]}" for x in kinds)
        print(f"  shift {s:+d}: {flagged[s]:3d} / {n} ({100 * flagged[s] / n:.0f} %; {each})")


if __name__ == "__main__":
    main()
