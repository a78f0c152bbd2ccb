"""evaluate_experiment: TSV contents equal the per-case library results; atomic, grid-checked."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from medpy.metric import binary as mb

from ctseg.core.errors import InputError
from ctseg.evaluation.centroids import centroids_from_labels, match_centroids
from ctseg.evaluation.evaluate import SUMMARY_COLUMNS, evaluate_experiment
from ctseg.evaluation.metrics import label_metrics

SPACING_XYZ = (1.5, 1.25, 2.0)


def write(arr: np.ndarray, path, spacing=SPACING_XYZ, origin=(-40.0, 12.0, 100.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    return img


def spine(shape=(30, 24, 24), levels=(18, 19, 20)) -> np.ndarray:
    a = np.zeros(shape, dtype=np.uint8)
    for i, lab in enumerate(levels):
        a[2 + 9 * i : 9 + 9 * i, 6:16, 7:17] = lab
    return a


@pytest.fixture
def cohort(tmp_path):
    pairs = []
    t1 = spine()
    p1 = np.roll(t1, 1, axis=2)  # all found, shifted by one voxel along x
    t2 = spine()
    p2 = spine(levels=(18, 20, 21))  # T12 labelled L1 and L1 labelled L2: off by one level
    p2[p2 == 18] = 0  # and T11 not predicted at all
    for case, (p, t) in {"a": (p1, t1), "b": (p2, t2)}.items():
        write(p, tmp_path / f"{case}_pred.nii.gz")
        write(t, tmp_path / f"{case}_truth.nii.gz")
        pairs.append(
            {
                "case": case,
                "pred": tmp_path / f"{case}_pred.nii.gz",
                "truth": tmp_path / f"{case}_truth.nii.gz",
            }
        )
    return pairs, {"a": (p1, t1), "b": (p2, t2)}


def run(tmp_path, pairs, task):
    out = [tmp_path / "eval" / n for n in ("metrics.tsv", "centroids.tsv", "summary.tsv")]
    evaluate_experiment(pairs, *out, task=task)
    return [pd.read_csv(p, sep="\t", keep_default_na=True) for p in out]


def test_vertebrae_experiment(tmp_path, cohort) -> None:
    pairs, arrays = cohort
    m, c, s = run(tmp_path, pairs, "vertebrae")
    sp = SPACING_XYZ[::-1]
    # metrics.tsv equals the library per case, and medpy on one label
    for case, (p, t) in arrays.items():
        rows = label_metrics(p, t, sp)
        got = m[m["case"] == case]
        assert got["label"].tolist() == [r["label"] for r in rows]
        for r, (_, g) in zip(rows, got.iterrows(), strict=True):
            for k in ("dice", "jaccard", "asd_mm", "assd_mm", "hd95_mm"):
                assert (math.isnan(r[k]) and math.isnan(g[k])) or g[k] == pytest.approx(
                    r[k], abs=1e-12
                )
    ga = m[(m["case"] == "a") & (m["label"] == 19)].iloc[0]
    p, t = arrays["a"]
    assert ga["name"] == "T12"
    assert ga["hd95_mm"] == pytest.approx(mb.hd95(p == 19, t == 19, sp), abs=1e-6)
    assert ga["dice"] == pytest.approx(0.9)  # 10 voxels wide, shifted by 1
    gb = m[(m["case"] == "b") & (m["label"] == 21)].iloc[0]
    assert gb["empty"] == "truth" and math.isnan(gb["hd95_mm"])
    # centroids.tsv: identification outcomes
    cb = c[c["case"] == "b"].set_index("label")
    assert cb.loc[18, "status"] == "missing" and cb.loc[19, "status"] == "missing"
    assert cb.loc[20, "identified_as"] == "T12" and not cb.loc[20, "identified"]
    assert cb.loc[20, "error_mm"] == pytest.approx(18.0)  # 9 slices of 2 mm: within 20 mm
    assert cb.loc[21, "status"] == "extra" and cb.loc[21, "identified_as"] == "L1"
    ca = c[c["case"] == "a"]
    assert ca["identified"].all() and ca["error_mm"].to_numpy() == pytest.approx([1.5] * 3)
    # summary.tsv: per-case rows = NaN-aware means of metrics rows; ALL pools all rows
    assert s.columns.tolist() == list(SUMMARY_COLUMNS)
    assert s["case"].astype(str).tolist() == ["a", "b", "ALL"]
    for case in ("a", "b"):
        row = s[s["case"] == case].iloc[0]
        mm = m[m["case"] == case]
        assert row["dice_mean"] == pytest.approx(mm["dice"].mean())
        assert row["dice_sd"] == pytest.approx(mm["dice"].std(ddof=1))
        assert row["hd95_mean"] == pytest.approx(mm["hd95_mm"].mean())  # pandas skips NaN
        assert row["n_surface"] == mm["assd_mm"].notna().sum()
    allr = s[s["case"] == "ALL"].iloc[0]
    assert allr["dice_mean"] == pytest.approx(m["dice"].mean())
    assert allr["asd_mean"] == pytest.approx(m["asd_mm"].mean())
    assert allr["n_dice"] == len(m)
    assert allr["n_true_vertebrae"] == 6 and allr["n_missing"] == 2 and allr["n_extra"] == 1
    found = c[c["status"] == "found"]
    assert allr["centroid_error_mean_mm"] == pytest.approx(found["error_mm"].mean())
    assert allr["centroid_error_median_mm"] == pytest.approx(found["error_mm"].median())
    assert allr["id_rate"] == pytest.approx(c["identified"].sum() / 6)
    # the centroid rows equal the library's matching on the images
    tb = centroids_from_labels(sitk.ReadImage(str(pairs[1]["truth"])))
    pb = centroids_from_labels(sitk.ReadImage(str(pairs[1]["pred"])))
    lib = match_centroids(tb, pb)
    assert [r["status"] for r in lib] == c[c["case"] == "b"]["status"].tolist()


def test_metal_task_header_only_centroids(tmp_path, cohort) -> None:
    pairs, _ = cohort
    m, c, s = run(tmp_path, pairs, "metal")
    assert len(c) == 0 and "identified_as" in c.columns and "case" in c.columns
    assert math.isnan(s.iloc[-1]["id_rate"])


def test_grid_mismatch_leaves_nothing(tmp_path, cohort) -> None:
    pairs, arrays = cohort
    p, _ = arrays["a"]
    write(p, tmp_path / "bad.nii.gz", spacing=(1.0, 1.0, 1.0))
    bad = [*pairs, {"case": "c", "pred": tmp_path / "bad.nii.gz", "truth": pairs[0]["truth"]}]
    with pytest.raises(InputError) as exc:
        evaluate_experiment(
            bad, tmp_path / "m.tsv", tmp_path / "c.tsv", tmp_path / "s.tsv", task="vertebrae"
        )
    assert "'c'" in str(exc.value) and "bad.nii.gz" in str(exc.value)
    assert not any((tmp_path / n).exists() for n in ("m.tsv", "c.tsv", "s.tsv"))
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]


def test_bone_drr_per_view_2d(tmp_path) -> None:
    yy, xx = np.mgrid[:32, :40]
    t = np.stack([((yy - 16) ** 2 + (xx - 20) ** 2 <= r * r) for r in (8, 10, 6)]).astype(np.uint8)
    p = np.stack([((yy - 17) ** 2 + (xx - 22) ** 2 <= r * r) for r in (8, 9, 1)]).astype(np.uint8)
    p[2] = 0  # nothing predicted in the third view
    write(t, tmp_path / "t.nii.gz", spacing=(0.8, 0.6, 1.0))
    write(p, tmp_path / "p.nii.gz", spacing=(0.8, 0.6, 1.0))
    m, c, s = run(
        tmp_path,
        [{"case": "x", "pred": tmp_path / "p.nii.gz", "truth": tmp_path / "t.nii.gz"}],
        "bone_drr",
    )
    assert m["view"].tolist() == [0, 1, 2] and (m["name"] == "bone").all()
    for v in (0, 1):
        row = m[m["view"] == v].iloc[0]
        assert row["dice"] == pytest.approx(mb.dc(p[v], t[v]))
        assert row["hd95_mm"] == pytest.approx(mb.hd95(p[v], t[v], (0.6, 0.8)), abs=1e-6)
        assert row["assd_mm"] == pytest.approx(mb.assd(p[v], t[v], (0.6, 0.8)), abs=1e-6)
    assert m[m["view"] == 2].iloc[0]["empty"] == "pred"
    assert s.iloc[0]["dice_mean"] == pytest.approx(m["dice"].mean())
    assert len(c) == 0


def test_bone_drr_truth_ids_are_scored_as_bone(tmp_path) -> None:
    """DRR truth holds projected vertebra ids; the bone task scores any id as bone."""
    t = np.zeros((2, 20, 20), np.uint8)
    t[:, 2:8, 5:15] = 8  # T1
    t[:, 10:18, 5:15] = 20  # L1
    p = (t > 0).astype(np.uint8)
    p[1, 10:18, 5:15] = 0  # second view misses L1
    write(t, tmp_path / "t.nii.gz", spacing=(1.0, 1.0, 1.0))
    write(p, tmp_path / "p.nii.gz", spacing=(1.0, 1.0, 1.0))
    m, _, _ = run(
        tmp_path,
        [{"case": "x", "pred": tmp_path / "p.nii.gz", "truth": tmp_path / "t.nii.gz"}],
        "bone_drr",
    )
    assert m["label"].tolist() == [1, 1]
    assert m.iloc[0]["dice"] == pytest.approx(1.0)
    assert m.iloc[1]["dice"] == pytest.approx(2 * 60 / (60 + 140))
