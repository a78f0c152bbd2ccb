"""Decoding settings of a trained localiser, measured on stored network outputs.

Running the localiser's networks on 45 held-out draws takes minutes; naming their points takes
milliseconds. This benchmark runs the networks once per draw (the seeds and cache of
``ctseg.localisation.population_experiment``, three draws per robustness family, never in a
case sheet), stores each refined point's evidence (``ctseg.localisation.predict.
refined_evidence``: world position, first-stage identification, region probabilities) in
``--store``, and scores identification (VerSe / Glocker et al.) for the package's own decoding
and for each ``--set`` of overrides of its ``regions`` decoding keys, with the same
``name_chain`` that prediction uses. A later call with the same ``--store`` skips the networks.

    .venv/bin/python benchmarks/bench_localiser_decoding.py \
        --localiser results/models/centroids/model.pt --store /tmp/decoding-7001.pkl \
        [--seeds-from 7001] [--cache /tmp/pexp/cache] \
        [--set weight=2 --set weight=1,chain_bonus=0.5] [--qc]

Prints the overall identification rate, mean error and false positives per setting, and per
family for the package's own; ``--qc`` adds QC's naming checks (``anatomy``, ``unanchored``)
on each draw's naming and their flag rates on right and wrong namings (README, *Outputs a
viewer opens*). A setting is worth adopting only if it holds on a second seed
set (``--seeds-from 9001``): see the README (*Measured on the population (held out)*) for
one that gained 6 points on one set and lost 2.5 on the other.
"""

from __future__ import annotations

import argparse
import copy
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ctseg.localisation import population_experiment as pe
from ctseg.localisation.cut_levels import drop_cut_ends
from ctseg.localisation.identify import identification_scores, identification_table
from ctseg.localisation.predict import name_chain


def store_evidence(localiser: Path, cache: Path, seeds_from: int, per_family: int) -> dict:
    """Run the localiser's networks on every draw: ``{"meta", "cases": [{"case", "family",
    "truth", "worlds", "votes", "probs", "inside"}]}``."""
    from ctseg.localisation.geometry import inside, read_ct
    from ctseg.localisation.predict import case_evidence, load_localiser

    loaded = load_localiser(localiser, "cpu")
    meta = loaded[1]
    if "refiner" not in (meta.get("subnet_modules") or {}):
        raise SystemExit(f"{localiser}: no refiner, nothing to decode along a refined chain")
    draws = list(pe.held_out_draws(cache, seeds_from, per_family))
    cases = []
    for it in tqdm(draws, desc="localiser networks"):
        ct = read_ct(it["ct"])
        worlds, votes, probs = case_evidence(loaded, ct)
        cases.append(
            {
                "case": it["case"],
                "family": it["family"],
                "truth": it["centroids"],
                "worlds": worlds,
                "votes": votes,
                "probs": probs,
                "inside": [inside(ct, w) for w in worlds],
                "geometry": geometry_of(ct),
            }
        )
    keep = {k: v for k, v in meta.items() if k != "subnet_modules"}
    return {"meta": keep, "cases": cases}


def geometry_of(ct) -> dict:
    """The CT's grid (size, spacing, origin, direction): what the cut-level rule measures."""
    return {
        "size": list(ct.GetSize()),
        "spacing": list(ct.GetSpacing()),
        "origin": list(ct.GetOrigin()),
        "direction": list(ct.GetDirection()),
    }


def grid_of(geometry: dict):
    """An empty image on a stored CT grid."""
    import SimpleITK as sitk

    img = sitk.Image([int(v) for v in geometry["size"]], sitk.sitkUInt8)
    img.SetSpacing(geometry["spacing"])
    img.SetOrigin(geometry["origin"])
    img.SetDirection(geometry["direction"])
    return img


def named_points(case: dict, meta: dict, cut_ends: bool = True) -> list[dict]:
    """A stored draw's points as prediction names them (``name_chain``), as
    ``predict_centroids`` keeps them: in the scan, without a cut end (``drop_cut_ends``;
    ``cut_ends=False``: with them, as before that rule)."""
    if "geometry" not in case:
        raise SystemExit("this --store predates the cut-level rule (no CT grid): delete it")
    pts = name_chain(list(case["worlds"]), np.asarray(case["votes"]), case["probs"], meta)
    seen = {tuple(w): ok for w, ok in zip(map(tuple, case["worlds"]), case["inside"], strict=True)}
    pts = [p for p in pts if seen[tuple(p["world"])]]
    return drop_cut_ends(pts, grid_of(case["geometry"])) if cut_ends else pts


def naming_qc(
    stored: dict, tab: pd.DataFrame, localiser: Path, cache: Path, seeds_from: int, per_family: int
) -> None:
    """QC's ``anatomy`` / ``unanchored`` flags (``ctseg.formats.qc.anatomy_flags``) on the
    package's own naming of each draw, against how much of the draw it identified: the flag
    rate on namings that are right and on namings that are not."""
    from ctseg.formats.qc import anatomy_flags
    from ctseg.localisation.geometry import read_ct
    from ctseg.localisation.predict import load_localiser
    from ctseg.localisation.regions import anatomy_rows

    loaded = load_localiser(localiser, "cpu")
    cts = {it["case"]: it["ct"] for it in pe.held_out_draws(cache, seeds_from, per_family)}
    out = []
    for c in tqdm(stored["cases"], desc="naming QC"):
        pts = [{"label": p["label"], "world": p["world"]} for p in named_points(c, stored["meta"])]
        flags = sorted(
            f["name"] for f in anatomy_flags(anatomy_rows(loaded, read_ct(cts[c["case"]]), pts))
        )
        rows = tab[(tab.case == c["case"]) & (tab.status != "extra")]
        out.append((float(rows.identified.mean()), flags))
        print(f"  {c['case']:20s} identified {out[-1][0]:.2f} flags {flags}")
    for what, keep in (
        ("all levels identified", lambda r: r == 1.0),
        ("a level missed", lambda r: r < 1.0),
        ("under half identified", lambda r: r < 0.5),
    ):
        hit = [f for r, f in out if keep(r)]
        print(f"naming QC, {what}: {sum(bool(f) for f in hit)}/{len(hit)} flagged")


def score(stored: dict, overrides: dict, cut_ends: bool = True) -> tuple[dict, pd.DataFrame]:
    """Identification over all stored draws with the ``regions`` decoding keys overridden."""
    meta = copy.deepcopy(stored["meta"])
    if overrides:
        if meta.get("regions") is None:
            raise SystemExit("the package has no region network: nothing to override")
        meta["regions"].update(overrides)
    tabs = []
    for c in stored["cases"]:
        tab = identification_table(named_points(c, meta, cut_ends), c["truth"])
        tab.insert(0, "case", c["case"])
        tab.insert(0, "family", c["family"])
        tabs.append(tab)
    tab = pd.concat(tabs, ignore_index=True)
    return identification_scores(tab), tab


def parse_setting(text: str) -> dict:
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if not value:
            raise SystemExit(f"--set {text!r}: expected key=value[,key=value]")
        out[key.strip()] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--localiser", type=Path, default=Path("results/models/centroids/model.pt"))
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/pexp/cache"))
    ap.add_argument("--seeds-from", type=int, default=7001)
    ap.add_argument("--per-family", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], dest="settings")
    ap.add_argument(
        "--qc", action="store_true", help="also QC's anatomy / unanchored flags per draw"
    )
    args = ap.parse_args()
    if args.store.exists():
        stored = pickle.loads(args.store.read_bytes())
    else:
        stored = store_evidence(args.localiser, args.cache, args.seeds_from, args.per_family)
        args.store.write_bytes(pickle.dumps(stored))
    own, tab = score(stored, {})
    print(f"{len(stored['cases'])} draws, {own['n_true']} true levels")
    for fam, rows in tab.groupby("family", sort=False):
        s = identification_scores(rows)
        print(f"  {fam:16s} id {s['id_rate']:.3f}  error {s['mean_error_mm']:.2f} mm")
    rows = [("package", own), ("package, cut ends named", score(stored, {}, cut_ends=False)[0])]
    rows += [(t, score(stored, parse_setting(t))[0]) for t in args.settings]
    for name, s in rows:
        print(
            f"{name:32s} id {s['id_rate']:.3f}  error {s['mean_error_mm']:.2f} mm  "
            f"false positives {s['false_positives']}"
        )
    if args.qc:
        naming_qc(stored, tab, args.localiser, args.cache, args.seeds_from, args.per_family)


if __name__ == "__main__":
    main()
