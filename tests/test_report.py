"""summary.md tables reproduce this run's TSVs (parsed back); the report plots are drawn; the
ctseg.report package loads a module only for the names used."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from ctseg.evaluation.evaluate import evaluate_experiment
from ctseg.report import fmt, plot_centroid_errors, plot_dice_box, plot_overlays, write_summary_md


def write(arr, path, spacing=(1.5, 1.5, 2.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def spine(shift=0, levels=(18, 19, 20), shape=(30, 20, 20)):
    a = np.zeros(shape, dtype=np.uint8)
    for i, lab in enumerate(levels):
        a[2 + 9 * i : 9 + 9 * i, 5:14, 5 + shift : 14 + shift] = lab
    return a


def make_experiment(tmp_path, name, task, preds):
    d = tmp_path / "eval" / name
    pairs = []
    for i, (p, t) in enumerate(preds):
        pp, tp = tmp_path / f"{name}_{i}_p.nii.gz", tmp_path / f"{name}_{i}_t.nii.gz"
        write(p, pp)
        write(t, tp)
        pairs.append({"case": f"c{i}", "pred": pp, "truth": tp})
    evaluate_experiment(pairs, d / "metrics.tsv", d / "centroids.tsv", d / "summary.tsv", task=task)
    return {
        "summary": d / "summary.tsv",
        "metrics": d / "metrics.tsv",
        "centroids": d / "centroids.tsv",
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    t = spine()
    missing = spine(shift=1)
    missing[missing == 20] = 0
    exps = {
        "vert3d": (
            {"task": "vertebrae", "model": "unet3d"},
            "vertebrae",
            [(spine(1), t), (spine(2), t)],
        ),
        "vert2d": (
            {"task": "vertebrae", "model": "unet2d"},
            "vertebrae",
            [(missing, t), (spine(0, (18, 20, 21)), t)],
        ),
        "metal2d": (
            {"task": "metal", "model": "unet2d"},
            "metal",
            [((t > 0).astype(np.uint8), (np.roll(t, 1, 0) > 0).astype(np.uint8))],
        ),
        "drr_none": (
            {"task": "bone_drr", "model": "unet2d", "preprocess": "none"},
            "bone_drr",
            [((spine(1) > 0).astype(np.uint8), (t > 0).astype(np.uint8))],
        ),
        "drr_local": (
            {"task": "bone_drr", "model": "unet2d", "preprocess": "local"},
            "bone_drr",
            [((t > 0).astype(np.uint8), (t > 0).astype(np.uint8))],
        ),
    }
    experiments = {}
    for name, (cfg, task, preds) in exps.items():
        experiments[name] = {"config": cfg, **make_experiment(tmp, name, task, preds)}
    stats = tmp / "stats.tsv"
    pd.DataFrame(
        {
            "case": ["p01", "real"],
            "hu_max": [3071.0, 2540.0],
            "hu_mean": [-512.25, float("nan")],
            "center_x_mm": [0.5, -0.48828125],
            "center_y_mm": [-1.0, -188.48828125],
            "center_z_mm": [120.0, -785.5],
            "n_slices": [112, 20],
        }
    ).to_csv(stats, sep="\t", index=False)
    metal = tmp / "metal.tsv"
    pd.DataFrame(
        {"case": ["p01", "real"], "metal_voxels": [812, 0], "metal_volume_mm3": [51968.0, 0.0]}
    ).to_csv(metal, sep="\t", index=False)
    out = tmp / "report" / "summary.md"
    write_summary_md(out, stats_tsv=stats, metal_tsv=metal, experiments=experiments)
    return out, experiments, stats, metal


def sections(md: str) -> dict[str, list[dict]]:
    """Parse every markdown table back, keyed by the closest preceding heading."""
    out: dict[str, list[dict]] = {}
    heading, header = None, None
    for line in md.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("# ").strip(), None
        elif line.startswith("|") and heading:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if header is None:
                header = cells
                out[heading] = []
            elif not set(line) <= set("|-"):
                out[heading].append(dict(zip(header, cells, strict=True)))
        else:
            header = None
    return out


def all_row(path) -> pd.Series:
    s = pd.read_csv(path, sep="\t")
    return s[s["case"].astype(str) == "ALL"].iloc[0]


def test_tables_present_per_seed(run_dir) -> None:
    out, *_ = run_dir
    sec = sections(out.read_text())
    for key in (
        "seed 002",
        "seed 000",
        "seed 001",
        "seed 003",
        "vert3d",
        "vert2d",
        "Per experiment",
    ):
        assert any(key in h for h in sec), key


def test_numbers_equal_tsv_inputs(run_dir) -> None:
    out, experiments, stats, metal = run_dir
    sec = sections(out.read_text())
    get = lambda frag: next(v for k, v in sec.items() if frag in k)  # noqa: E731
    # seed 002: every number of the stats / metal tables, NaN as n/a
    st = pd.read_csv(stats, sep="\t")
    rows = get("DICOM summary")
    for (_, r), md in zip(st.iterrows(), rows, strict=True):
        assert md["case"] == r["case"]
        for col in ("hu_max", "hu_mean", "center_x_mm", "center_z_mm", "n_slices"):
            if isinstance(r[col], float) and math.isnan(r[col]):
                assert md[col] == "n/a"
            else:
                assert float(md[col]) == pytest.approx(r[col], abs=5e-5)
    mt = get("Metal statistics")
    assert [int(r["metal_voxels"]) for r in mt] == [812, 0]
    assert float(mt[0]["metal_volume_mm3"]) == 51968.0
    # seed 000: Dice mean ± sd by pre-processing
    drr = {r["experiment"]: r for r in get("seed 000")}
    assert set(drr) == {"drr_none", "drr_local"} and drr["drr_local"]["pre-processing"] == "local"
    for name, r in drr.items():
        a = all_row(experiments[name]["summary"])
        m, sd = r["Dice (mean ± sd)"].split(" ± ")
        assert float(m) == pytest.approx(a["dice_mean"], abs=5e-5)
        assert float(sd) == pytest.approx(a["dice_sd"], abs=5e-5)
        mt = pd.read_csv(experiments[name]["metrics"], sep="\t")
        assert float(m) == pytest.approx(mt["dice"].mean(), abs=5e-5)
        assert int(r["n"]) == len(mt)
    assert float(drr["drr_local"]["Dice (mean ± sd)"].split(" ± ")[0]) == 1.0
    # seed 001: UNet2D vs UNet3D
    v = {r["model"]: r for r in get("seed 001")}
    assert set(v) == {"unet2d", "unet3d"}
    for model, name in (("unet3d", "vert3d"), ("unet2d", "vert2d")):
        a = all_row(experiments[name]["summary"])
        assert float(v[model]["Dice (mean ± sd)"].split(" ± ")[0]) == pytest.approx(
            a["dice_mean"], abs=5e-5
        )
        assert float(v[model]["Jaccard (mean ± sd)"].split(" ± ")[0]) == pytest.approx(
            a["jaccard_mean"], abs=5e-5
        )
    # seed 003: Dice / Jaccard / ASD / HD95 for every experiment
    t3 = {r["experiment"]: r for r in get("seed 003")}
    assert set(t3) == set(experiments)
    for name, r in t3.items():
        a = all_row(experiments[name]["summary"])
        for col, key in (
            ("Dice", "dice_mean"),
            ("Jaccard", "jaccard_mean"),
            ("ASD (mm)", "asd_mean"),
            ("HD95 (mm)", "hd95_mean"),
        ):
            assert float(r[col]) == pytest.approx(a[key], abs=5e-5), (name, col)
    # seed 004: per-vertebra table and the experiment's mean error / identification rate
    c = pd.read_csv(experiments["vert2d"]["centroids"], sep="\t")
    pv = {r["vertebra"]: r for r in get("vert2d")}
    for vert, g in c[c["status"] != "extra"].groupby("vertebra"):
        err = g["error_mm"].mean()
        assert pv[vert]["mean error (mm)"] == fmt(err)
        assert float(pv[vert]["identification rate"]) == pytest.approx(g["identified"].mean())
        assert int(pv[vert]["missing"]) == int((g["status"] == "missing").sum())
    assert pv["L1"]["missing"] == "1"
    text = out.read_text()
    a = all_row(experiments["vert2d"]["summary"])
    assert f"identification rate: {a['id_rate']:.4f}" in text
    assert f"Mean centroid error: {a['centroid_error_mean_mm']:.4f} mm" in text
    # overview: non-vertebra experiments have no centroids -> n/a, never 0
    ov = {r["experiment"]: r for r in get("Per experiment")}
    assert (
        ov["metal2d"]["centroid error (mm)"] == "n/a"
        and ov["metal2d"]["identification rate"] == "n/a"
    )
    assert float(ov["vert3d"]["identification rate"]) == pytest.approx(
        all_row(experiments["vert3d"]["summary"])["id_rate"]
    )


def test_missing_inputs_are_na_not_crash(tmp_path) -> None:
    out = tmp_path / "s.md"
    write_summary_md(
        out,
        stats_tsv=tmp_path / "nope.tsv",
        metal_tsv=None,
        experiments={"x": {"config": {"task": "vertebrae"}, "summary": tmp_path / "no.tsv"}},
    )
    sec = sections(out.read_text())
    row = next(v for k, v in sec.items() if "Per experiment" in k)[0]
    assert row["Dice"] == "n/a" and row["identification rate"] == "n/a"


def test_plots(run_dir, tmp_path) -> None:
    _, experiments, *_ = run_dir
    png = tmp_path / "dice.png"
    plot_dice_box(experiments["vert3d"]["metrics"], png)
    assert mpimg.imread(png).ndim == 3
    png = tmp_path / "cent.png"
    plot_centroid_errors(experiments["vert2d"]["centroids"], png)
    assert mpimg.imread(png).ndim == 3
    png = tmp_path / "cent_empty.png"
    plot_centroid_errors(experiments["metal2d"]["centroids"], png)  # header-only table
    assert png.is_file()
    ct = np.full((30, 20, 20), -1000, np.int16)
    t = spine()
    ct[t > 0] = 700
    write(ct, tmp_path / "ct.nii.gz")
    write(t, tmp_path / "t.nii.gz")
    write(spine(2), tmp_path / "p.nii.gz")
    png = tmp_path / "overlay.png"
    plot_overlays(tmp_path / "ct.nii.gz", tmp_path / "t.nii.gz", tmp_path / "p.nii.gz", png)
    img = mpimg.imread(png)[..., :3]
    red = (img[..., 0] > 0.8) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)
    green = (img[..., 1] > 0.8) & (img[..., 0] < 0.3) & (img[..., 2] < 0.3)
    assert red.sum() > 20 and green.sum() > 20  # both contours drawn
    assert not [p for p in tmp_path.iterdir() if re.match(r"^\.", p.name)]


def test_package_loads_a_module_only_when_its_names_are_used() -> None:
    """Training's plot module comes without the report tables / plots (nor pandas); the names
    of the former ctseg/report.py still resolve from the package."""
    code = (
        "import sys\n"
        "import ctseg.report.training\n"
        "assert not {'ctseg.report.tables', 'ctseg.report.plots', 'pandas'} & set(sys.modules)\n"
        "import ctseg.report as r\n"
        "assert r.plot_dice_box.__module__ == 'ctseg.report.plots'\n"
        "assert all(getattr(r, n) is not None for n in r.__all__)\n"
        "assert not hasattr(r, 'no_such_name')\n"
    )
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=repo, check=True, timeout=120)
