"""The phantom experiment behind the README's centroid-only figures, reproducible.

``python -m ctseg.localisation.experiment OUT [CONFIG_JSON]``: trains on 8 default-size
phantoms (seeds 101-108, implants in two), tests on 4 others (201-204), then scores the model on
the robustness families (seeds 301-303 each). Writes ``OUT/model.pt``, ``history.tsv``,
``test_table.tsv`` (seed 004's per-vertebra table), ``robustness.tsv`` and ``summary.json``
(test scores, training wall and CPU seconds). One torch thread, CPU.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ctseg import phantom
from ctseg.localisation.geometry import inside
from ctseg.localisation.identify import identification_scores, identification_table
from ctseg.localisation.predict import load_localiser, predict_centroids
from ctseg.localisation.training import train_localiser

TRAIN_SEEDS = tuple(range(101, 109))
TEST_SEEDS = tuple(range(201, 205))
ROBUST_SEEDS = (301, 302, 303)
IMPLANTS = {101: ["L3", "L4"], 104: ["T11", "T12", "L1"], 202: ["L4", "L5"]}


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _case(seed: int, params: dict | None = None) -> dict:
    ph = phantom.generate(seed, {"implants": IMPLANTS.get(seed, []), **(params or {})})
    return {"case": f"ph{seed}", "ct": ph.image("hu"), "centroids": ph.centroids}


def _rot_x(deg: float) -> list[float]:
    a = math.radians(deg)
    return [1, 0, 0, 0, math.cos(a), -math.sin(a), 0, math.sin(a), math.cos(a)]


def _crop_z(item: dict, lo: float, hi: float) -> dict:
    """The case with only the slices between fractions ``lo`` and ``hi`` of its z extent, and
    the true centroids that lie in that field of view."""
    ct = item["ct"]
    n = ct.GetSize()[2]
    sub = ct[:, :, int(lo * n) : int(hi * n)]
    truth = [c for c in item["centroids"] if inside(sub, [c["x"], c["y"], c["z"]])]
    return {**item, "ct": sub, "centroids": truth}


def _flip(item: dict) -> dict:
    """The same scan stored feet-first and right-to-left (same world geometry)."""
    ct = item["ct"]
    arr = sitk.GetArrayFromImage(ct)[::-1, :, ::-1]
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    out.SetSpacing(ct.GetSpacing())
    out.SetOrigin(ct.TransformIndexToPhysicalPoint([ct.GetSize()[0] - 1, 0, ct.GetSize()[2] - 1]))
    out.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    return {**item, "ct": out}


#: family -> function of a seed giving a test item
FAMILIES = {
    "default": lambda s: _case(s),
    "crop_lower_60pct": lambda s: _crop_z(_case(s), 0.0, 0.6),
    "crop_upper_50pct": lambda s: _crop_z(_case(s), 0.5, 1.0),
    "feet_first_flipped": lambda s: _flip(_case(s)),
    "oblique_10deg": lambda s: _case(s, {"direction": _rot_x(10.0)}),
    "body_0.9": lambda s: _case(s, {"body_scale": 0.9}),
    "body_1.1": lambda s: _case(s, {"body_scale": 1.1}),
    "voxels_3mm": lambda s: _case(s, {"shape": [128, 107, 149], "spacing_mm": [3.0] * 3}),
    "scoliosis_25mm": lambda s: _case(s, {"scoliosis_mm": 25.0}),
    "noise_80hu": lambda s: _case(s, {"noise_hu": 80.0}),
    "implants_T10_L2": lambda s: _case(s, {"implants": ["T10", "T11", "T12", "L1", "L2"]}),
}


def score(model, items: list[dict]) -> pd.DataFrame:
    """Per-vertebra table of every item (a ``case`` column first)."""
    tabs = []
    for it in items:
        tab = identification_table(predict_centroids(model, it["ct"]), it["centroids"])
        tab.insert(0, "case", it["case"])
        tabs.append(tab)
    return pd.concat(tabs, ignore_index=True)


def run(out: Path, config: dict | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    train = [_case(s) for s in TRAIN_SEEDS]
    test = [_case(s) for s in TEST_SEEDS]
    t0, c0 = time.perf_counter(), _cpu_seconds()
    model_pt = train_localiser(train, test, out, config, seed=7, device="cpu", threads=1)
    summary = {"train_wall_s": time.perf_counter() - t0, "train_cpu_s": _cpu_seconds() - c0}
    model = load_localiser(model_pt, "cpu")
    table = score(model, test)
    table.to_csv(out / "test_table.tsv", sep="\t", index=False)
    summary.update(identification_scores(table))
    rows = []
    for fam, make in FAMILIES.items():
        s = identification_scores(score(model, [make(seed) for seed in ROBUST_SEEDS]))
        rows.append({"family": fam, **s})
        print(f"{fam}: id {s['id_rate']:.3f} error {s['mean_error_mm']:.2f} mm", flush=True)
    pd.DataFrame(rows).to_csv(out / "robustness.tsv", sep="\t", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    cfg = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    print(json.dumps(run(Path(sys.argv[1]), cfg), indent=2))
