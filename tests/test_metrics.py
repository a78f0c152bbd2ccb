"""ctseg.evaluation.metrics against analytic shapes and against medpy (the reference definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from medpy.metric import binary as mb

from ctseg.cli import main as cli_main
from ctseg.core.errors import InputError
from ctseg.core.labels import apply_label_map
from ctseg.evaluation.metrics import (
    array_spacing,
    binary_metrics,
    check_same_grid,
    label_metrics,
    surface_distances,
)

SPACING = (2.0, 1.5, 0.7)  # z, y, x


def medpy_row(p: np.ndarray, t: np.ndarray, sp) -> dict:
    return {
        "dice": mb.dc(p, t),
        "jaccard": mb.jc(p, t),
        "asd_mm": mb.asd(p, t, sp, 1),
        "assd_mm": mb.assd(p, t, sp, 1),
        "hd95_mm": mb.hd95(p, t, sp, 1),
        "precision": mb.precision(p, t),
        "recall": mb.recall(p, t),
    }


def assert_matches_medpy(row: dict, p: np.ndarray, t: np.ndarray, sp) -> None:
    ref = medpy_row(p, t, sp)
    for k, v in ref.items():
        assert row[k] == pytest.approx(v, abs=1e-6, rel=0), k


def cube(shape, lo, n) -> np.ndarray:
    a = np.zeros(shape, dtype=bool)
    a[lo[0] : lo[0] + n, lo[1] : lo[1] + n, lo[2] : lo[2] + n] = True
    return a


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shifted_cubes_analytic(k: int) -> None:
    n = 10
    t = cube((16, 16, 20), (3, 3, 3), n)
    p = cube((16, 16, 20), (3, 3, 3 + k), n)
    r = binary_metrics(p, t, SPACING)
    assert r["dice"] == pytest.approx(1 - k / n, abs=1e-12)
    assert r["jaccard"] == pytest.approx((n - k) / (n + k), abs=1e-12)
    assert r["precision"] == pytest.approx((n - k) / n, abs=1e-12)
    assert r["vol_diff_mm3"] == 0.0
    assert r["vol_truth_mm3"] == pytest.approx(n**3 * 2.0 * 1.5 * 0.7)
    d_pt, d_tp = surface_distances(p, t, np.array(SPACING))
    assert max(d_pt.max(), d_tp.max()) == pytest.approx(k * SPACING[2], abs=1e-12)
    assert r["hd95_mm"] <= k * SPACING[2] + 1e-12
    assert_matches_medpy(r, p, t, SPACING)


def test_identical_masks_zero_distance() -> None:
    t = cube((12, 12, 12), (2, 3, 4), 5)
    r = binary_metrics(t, t, SPACING)
    assert (r["dice"], r["jaccard"], r["asd_mm"], r["assd_mm"], r["hd95_mm"]) == (1, 1, 0, 0, 0)
    assert r["empty"] == ""


def test_spheres_match_medpy() -> None:
    z, y, x = np.mgrid[:30, :34, :38]
    t = (z - 15) ** 2 + (y - 16) ** 2 + (x - 18) ** 2 <= 9**2
    p = (z - 16) ** 2 + (y - 18) ** 2 + (x - 17) ** 2 <= 8**2
    r = binary_metrics(p, t, SPACING)
    assert_matches_medpy(r, p, t, SPACING)
    # concentric spheres r=9 and r=8: the inner one lies inside, Dice = 2 |B| / (|A| + |B|)
    q = (z - 15) ** 2 + (y - 16) ** 2 + (x - 18) ** 2 <= 8**2
    r2 = binary_metrics(q, t, (1.0, 1.0, 1.0))
    assert r2["dice"] == pytest.approx(2 * q.sum() / (q.sum() + t.sum()))
    assert r2["precision"] == 1.0


def test_border_touching_objects_match_medpy() -> None:
    # Objects on the array border: medpy's erosion treats outside as background.
    t = np.zeros((8, 9, 10), dtype=bool)
    t[:4, :, 2:7] = True
    p = np.zeros_like(t)
    p[:5, 1:, 3:10] = True
    assert_matches_medpy(binary_metrics(p, t, SPACING), p, t, SPACING)


def test_2d_matches_medpy() -> None:
    y, x = np.mgrid[:40, :50]
    t = (y - 20) ** 2 + (x - 22) ** 2 <= 100
    p = ((y - 22) ** 2 / 1.3 + (x - 25) ** 2 <= 90) & (x < 35)
    r = binary_metrics(p, t, (0.8, 1.2))
    assert_matches_medpy(r, p, t, (0.8, 1.2))


def test_empty_policy() -> None:
    t = cube((10, 10, 10), (2, 2, 2), 4)
    e = np.zeros_like(t)
    r = binary_metrics(e, t, SPACING)
    assert (r["dice"], r["jaccard"], r["recall"], r["empty"]) == (0.0, 0.0, 0.0, "pred")
    assert all(math.isnan(r[k]) for k in ("asd_mm", "assd_mm", "hd95_mm", "precision"))
    assert r["vol_diff_rel"] == -1.0
    r = binary_metrics(t, e, SPACING)
    assert (r["dice"], r["jaccard"], r["precision"], r["empty"]) == (0.0, 0.0, 0.0, "truth")
    assert all(math.isnan(r[k]) for k in ("asd_mm", "hd95_mm", "recall", "vol_diff_rel"))
    r = binary_metrics(e, e, SPACING)
    assert r["empty"] == "both" and math.isnan(r["dice"])
    # label maps: a label in neither map is not reported; one-sided labels are flagged
    lt = np.zeros((10, 10, 10), dtype=np.uint8)
    lp = np.zeros_like(lt)
    lt[1:4, 1:4, 1:4] = 3
    lp[5:8, 5:8, 5:8] = 7
    rows = label_metrics(lp, lt, SPACING, labels=[3, 5, 7])
    assert [(r["label"], r["empty"], r["dice"]) for r in rows] == [
        (3, "pred", 0.0),
        (7, "truth", 0.0),
    ]


def test_label_metrics_equals_binary_per_label() -> None:
    rng = np.random.default_rng(0)
    lt = np.zeros((20, 24, 28), dtype=np.uint8)
    for i, lab in enumerate((20, 21, 22)):
        lt[2 + 6 * i : 7 + 6 * i, 5:15, 6:20] = lab
    lp = np.roll(lt, 1, axis=2)
    lp[rng.random(lp.shape) < 0.02] = 0
    rows = label_metrics(lp, lt, SPACING)
    assert [r["label"] for r in rows] == [20, 21, 22]
    for r in rows:
        b = binary_metrics(lp == r["label"], lt == r["label"], SPACING)
        for k, v in b.items():
            assert (r[k] == v) or (isinstance(v, float) and math.isnan(v) and math.isnan(r[k]))


@pytest.fixture(scope="module")
def real_crop(real_labels_path):
    img = sitk.ReadImage(str(real_labels_path))
    arr = sitk.GetArrayFromImage(img)[:, 100:240, 170:330]  # the spine and its neighbours
    return arr, array_spacing(img)


@pytest.mark.real
@pytest.mark.parametrize("perturb", ["shift", "erode", "remove"])
def test_real_labels_match_medpy(real_crop, perturb: str) -> None:
    from scipy import ndimage

    t, sp = real_crop
    if perturb == "shift":
        p = np.roll(t, (1, 3, -2), axis=(0, 1, 2))
    elif perturb == "erode":
        p = t.copy()
        for lab in (32, 33, 86):
            m = t == lab
            p[m & ~ndimage.binary_erosion(m, iterations=2)] = 0
    else:
        p = t.copy()
        p[p == 33] = 0
    labels = [5, 32, 33, 52, 86]
    rows = {r["label"]: r for r in label_metrics(p, t, sp, labels=labels)}
    assert set(rows) == set(labels)
    for lab in labels:
        pm, tm = p == lab, t == lab
        if not pm.any():
            assert rows[lab]["empty"] == "pred" and math.isnan(rows[lab]["hd95_mm"])
            continue
        assert_matches_medpy(rows[lab], pm, tm, sp)


def test_remap_labels_drops_unmapped() -> None:
    a = np.array([[0, 32, 33, 5]], dtype=np.uint8)
    assert apply_label_map(a, {32: 19, 33: 18}).tolist() == [[0, 19, 18, 0]]


def _write(arr: np.ndarray, path, spacing=(0.7, 1.5, 2.0), origin=(0.0, 0.0, 0.0)) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def test_cli_metrics(tmp_path) -> None:
    t = np.zeros((12, 14, 16), dtype=np.uint8)
    t[2:8, 3:10, 4:12] = 32  # TotalSegmentator T12 in the truth
    p = np.zeros_like(t)
    p[3:9, 3:10, 5:12] = 19  # VerSe T12 in the prediction
    _write(t, tmp_path / "gt.nii.gz")
    _write(p, tmp_path / "pred.nii.gz")
    out = tmp_path / "m.tsv"
    rc = cli_main(
        [
            "metrics",
            str(tmp_path / "pred.nii.gz"),
            str(tmp_path / "gt.nii.gz"),
            "--label-map",
            "totalseg_v2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    import pandas as pd

    df = pd.read_csv(out, sep="\t")
    assert df["label"].tolist() == [19] and df["name"].tolist() == ["T12"]
    sp = (2.0, 1.5, 0.7)
    ref = medpy_row(p == 19, t == 32, sp)
    for k, v in ref.items():
        assert df[k].iloc[0] == pytest.approx(v, abs=1e-6)
    # grids differ -> error naming both files, no output
    _write(p, tmp_path / "pred2.nii.gz", origin=(5.0, 0.0, 0.0))
    out2 = tmp_path / "m2.tsv"
    assert (
        cli_main(
            [
                "metrics",
                str(tmp_path / "pred2.nii.gz"),
                str(tmp_path / "gt.nii.gz"),
                "--out",
                str(out2),
            ]
        )
        == 1
    )
    assert not out2.exists()


def test_check_same_grid_names_files() -> None:
    a = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    b = sitk.Image(4, 5, 7, sitk.sitkUInt8)
    with pytest.raises(InputError) as exc:
        check_same_grid(a, b, "pred.nii.gz", "truth.nii.gz", case="c1")
    assert (
        "pred.nii.gz" in str(exc.value)
        and "truth.nii.gz" in str(exc.value)
        and "c1" in str(exc.value)
    )
