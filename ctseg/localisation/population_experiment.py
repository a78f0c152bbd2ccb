"""The localiser on the phantom population: train on the default cohort's draws, score on
unseen seeds of every robustness family.

``python -m ctseg.localisation.population_experiment OUT [CONFIG_JSON] [--seeds-from N]
[--model MODEL_PT]`` (``--model``: score a trained localiser, e.g. the workflow's, without
training)

Training and validation cases are the default config's population draws (the seeds of
``cases.tsv``'s train / val rows); test cases are drawn per family of ``config.robustness.yaml``
with seeds the workflow's sheets never use (``--seeds-from``, default 7001, three per family),
so a figure here is a held-out figure. Phantoms are cached as NIfTI under ``OUT/../cache`` (a
draw is deterministic in its seed and parameters). Writes ``OUT/model.pt``, ``history.tsv``,
``families.tsv`` (identification per family) and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from itertools import groupby
from pathlib import Path

import pandas as pd
import SimpleITK as sitk
import yaml

from ctseg import phantom
from ctseg.localisation.identify import identification_scores, identification_table
from ctseg.localisation.predict import load_localiser, predict_centroids
from ctseg.localisation.training import train_localiser
from ctseg.phantom.population import case_params

ROOT = Path(__file__).resolve().parents[2]


def _configs() -> tuple[dict, dict, pd.DataFrame]:
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    rob = yaml.safe_load((ROOT / "config.robustness.yaml").read_text())
    sheet = pd.read_csv(ROOT / "cases.tsv", sep="\t", dtype=str).fillna("")
    return base, rob, sheet


def cached_case(cache: Path, phantom_cfg: dict, name: str, seed: int, family: str = "") -> dict:
    """``{"case", "ct", "centroids"}`` of one population draw, generated once and cached."""
    params = case_params(phantom_cfg, name, seed, family)
    key = hashlib.sha256(json.dumps([seed, params], sort_keys=True, default=str).encode())
    folder = cache / f"{name}-{key.hexdigest()[:12]}"
    ct_path, ctr_path = folder / "ct.nii.gz", folder / "centroids.json"
    if not ctr_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        ph = phantom.generate(seed, params)
        sitk.WriteImage(ph.image("hu"), str(ct_path))
        ctr_path.write_text(json.dumps(ph.centroids))
    return {
        "case": name,
        "family": family,
        "ct": str(ct_path),
        "centroids": json.loads(ctr_path.read_text()),
    }


def family_config() -> dict:
    """The default population's phantom config with every robustness family, in-distribution
    first: what the held-out draws are drawn from."""
    base, rob, _ = _configs()
    return {**base["phantom"], "families": {"in_distribution": {}, **rob["phantom"]["families"]}}


def held_out_draws(cache: Path, seeds_from: int = 7001, per_family: int = 3, fam_cfg=None):
    """``{"case", "family", "ct", "centroids"}`` of each held-out draw, family by family:
    seeds ``seeds_from + 100 k + j`` for the k-th family, j < ``per_family`` (seeds no case
    sheet uses), generated once into ``cache``. The one definition of the held-out set the
    localiser and QC benchmarks score on."""
    fam_cfg = fam_cfg or family_config()
    for k, fam in enumerate(fam_cfg["families"]):
        for j in range(per_family):
            seed = seeds_from + 100 * k + j
            yield cached_case(cache, fam_cfg, f"{fam}{seed}", seed, fam)


def run(
    out: Path,
    config: dict | None = None,
    seeds_from: int = 7001,
    per_family: int = 3,
    model_pt: Path | None = None,
):
    """Train (unless ``model_pt`` names a trained localiser, e.g. the workflow's) and score."""
    base, _rob, sheet = _configs()
    cache = out.parent / "cache"
    pcfg = base["phantom"]
    fam_cfg = family_config()
    out.mkdir(parents=True, exist_ok=True)
    if model_pt is not None:
        return score_families(out, Path(model_pt), fam_cfg, cache, seeds_from, per_family, {})
    items = {
        split: [
            cached_case(cache, pcfg, r.case, int(r.location))
            for r in sheet.itertuples()
            if r.split == split
        ]
        for split in ("train", "val")
    }
    loc_cfg = {**base["experiments"]["centroids"]["localiser"], **(config or {})}
    t0 = time.perf_counter()
    model_pt = train_localiser(
        items["train"], items["val"], out, loc_cfg, seed=int(base["seed"]), device="cpu"
    )
    summary = {"train_wall_s": round(time.perf_counter() - t0, 1), "config": loc_cfg}
    return score_families(out, model_pt, fam_cfg, cache, seeds_from, per_family, summary)


def score_families(
    out: Path, model_pt: Path, fam_cfg: dict, cache: Path, seeds_from: int, per_family: int, summary
) -> dict:
    """Identification per family on unseen seeds; writes families.tsv, table.tsv, summary.json."""
    model = load_localiser(model_pt, "cpu")
    rows, tables = [], []
    draws = held_out_draws(cache, seeds_from, per_family, fam_cfg)
    for fam, items in groupby(draws, key=lambda it: it["family"]):  # family by family
        tabs = []
        for it in items:
            tab = identification_table(predict_centroids(model, it["ct"]), it["centroids"])
            tab.insert(0, "case", it["case"])
            tabs.append(tab)
        tab = pd.concat(tabs, ignore_index=True)
        tab.insert(0, "family", fam)
        tables.append(tab)
        s = identification_scores(tab)
        rows.append({"family": fam, **s})
        print(f"{fam}: id {s['id_rate']:.3f} error {s['mean_error_mm']:.2f} mm", flush=True)
    fams = pd.DataFrame(rows)
    fams.to_csv(out / "families.tsv", sep="\t", index=False)
    pd.concat(tables).to_csv(out / "table.tsv", sep="\t", index=False)
    summary["overall"] = identification_scores(pd.concat(tables, ignore_index=True))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


if __name__ == "__main__":
    args = sys.argv[1:]
    seeds_from, model_arg = 7001, None
    if "--model" in args:
        i = args.index("--model")
        model_arg = Path(args[i + 1])
        del args[i : i + 2]
    if "--seeds-from" in args:
        i = args.index("--seeds-from")
        seeds_from = int(args[i + 1])
        del args[i : i + 2]
    cfg = json.loads(args[1]) if len(args) > 1 else {}
    print(
        json.dumps(run(Path(args[0]), cfg, seeds_from, model_pt=model_arg), indent=2, default=str)
    )
