"""Centroids in world coordinates (known geometry) and Glocker/VerSe identification."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from ctseg.cli import main as cli_main
from ctseg.core.labels import TOTALSEG_V2_TO_VERSE, apply_label_map
from ctseg.evaluation.centroids import (
    centroids_from_labels,
    identification_summary,
    match_centroids,
)

SPACING = (0.8, 1.3, 2.5)  # x, y, z
ORIGIN = (10.0, -20.0, 30.0)
_c, _s = math.cos(math.radians(30)), math.sin(math.radians(30))
# rotation about z by 30 degrees, then the y axis flipped: a proper non-identity direction
DIRECTION = np.array([[_c, _s, 0.0], [_s, -_c, 0.0], [0.0, 0.0, 1.0]])


def world(idx_xyz) -> np.ndarray:
    """Independent index -> world mapping: origin + D @ diag(spacing) @ index."""
    return np.asarray(ORIGIN) + DIRECTION @ (np.asarray(SPACING) * np.asarray(idx_xyz, float))


def test_cube_centroids_known_world_points() -> None:
    arr = np.zeros((20, 30, 40), dtype=np.uint8)  # z, y, x
    boxes = {
        20: ((2, 6), (3, 9), (5, 12)),
        21: ((10, 15), (12, 20), (20, 33)),
        8: ((16, 19), (0, 4), (36, 40)),
    }
    for lab, ((z0, z1), (y0, y1), (x0, x1)) in boxes.items():
        arr[z0:z1, y0:y1, x0:x1] = lab
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION.ravel().tolist())
    cents = centroids_from_labels(img)
    assert [c["label"] for c in cents] == [8, 20, 21]
    assert [c["name"] for c in cents] == ["T1", "L1", "L2"]
    for c in cents:
        (z0, z1), (y0, y1), (x0, x1) = boxes[c["label"]]
        expect = world(((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (z0 + z1 - 1) / 2))
        assert np.allclose([c["x"], c["y"], c["z"]], expect, atol=1e-6, rtol=0)
    assert [c["label"] for c in centroids_from_labels(img, labels=[21, 5])] == [21]


def cent(label: int, x: float, y: float, z: float) -> dict:
    return {"label": label, "name": "", "x": x, "y": y, "z": z}


TRUE = [cent(18, 0, 0, 100), cent(19, 0, 0, 70), cent(20, 0, 0, 40), cent(21, 0, 0, 10)]


def test_small_shift_identified() -> None:
    pred = [cent(c["label"], c["x"] + 3.0, c["y"] - 4.0, c["z"]) for c in TRUE]
    rows = match_centroids(TRUE, pred)
    assert all(r["identified"] and r["status"] == "found" for r in rows)
    assert [r["error_mm"] for r in rows] == pytest.approx([5.0] * 4)
    assert [r["identified_as"] for r in rows] == ["T11", "T12", "L1", "L2"]
    s = identification_summary(rows)
    assert (s["id_rate"], s["mean_error_mm"], s["median_error_mm"]) == (1.0, 5.0, 5.0)
    assert (s["precision"], s["recall"], s["n_missing"], s["n_extra"]) == (1.0, 1.0, 0, 0)


def test_within_20mm_but_closer_to_neighbour_not_identified() -> None:
    # L1 predicted 18 mm from its truth but only 12 mm from L2's truth
    pred = [cent(18, 0, 0, 100), cent(19, 0, 0, 70), cent(20, 0, 0, 22), cent(21, 0, 0, 10)]
    r = {x["label"]: x for x in match_centroids(TRUE, pred)}
    assert r[20]["error_mm"] == pytest.approx(18.0)
    assert r[20]["identified"] is False and r[20]["identified_as"] == "L2"
    # beyond 20 mm from everything: not identified, identified_as empty
    pred[2] = cent(20, 50, 0, 40)
    r = {x["label"]: x for x in match_centroids(TRUE, pred)}
    assert r[20]["identified"] is False and r[20]["identified_as"] == ""


def test_label_swap() -> None:
    pred = [cent(18, 0, 0, 100), cent(19, 0, 0, 40), cent(20, 0, 0, 70), cent(21, 0, 0, 10)]
    r = {x["label"]: x for x in match_centroids(TRUE, pred)}
    assert r[19]["identified"] is False and r[19]["identified_as"] == "L1"
    assert r[20]["identified"] is False and r[20]["identified_as"] == "T12"
    assert r[19]["error_mm"] == pytest.approx(30.0)
    s = identification_summary(list(r.values()))
    assert s["id_rate"] == 0.5 and s["n_identified"] == 2


def test_missing_and_extra_counted() -> None:
    pred = [cent(18, 0, 0, 101), cent(19, 0, 0, 71), cent(21, 0, 0, 11), cent(22, 0, 0, -20)]
    rows = match_centroids(TRUE, pred)
    by = {r["label"]: r for r in rows}
    assert (
        by[20]["status"] == "missing"
        and math.isnan(by[20]["error_mm"])
        and math.isnan(by[20]["pred_x"])
    )
    assert by[22]["status"] == "extra" and math.isnan(by[22]["true_z"]) and by[22]["pred_z"] == -20
    assert by[22]["vertebra"] == "L3"
    s = identification_summary(rows)
    assert (s["n_true"], s["n_pred"], s["n_missing"], s["n_extra"], s["n_identified"]) == (
        4,
        4,
        1,
        1,
        3,
    )
    assert s["id_rate"] == 0.75 and s["recall"] == 0.75 and s["precision"] == 0.75
    assert s["mean_error_mm"] == pytest.approx(1.0) and s["n_matched"] == 3
    empty = identification_summary(match_centroids(TRUE, []))
    assert (
        empty["id_rate"] == 0.0
        and math.isnan(empty["mean_error_mm"])
        and math.isnan(empty["precision"])
    )


@pytest.mark.real
def test_real_labels_centroids_numpy(real_labels_path, tmp_path) -> None:
    img = sitk.ReadImage(str(real_labels_path))
    arr = sitk.GetArrayFromImage(img)
    mapped = apply_label_map(arr, TOTALSEG_V2_TO_VERSE)
    mimg = sitk.GetImageFromArray(mapped)
    mimg.CopyInformation(img)
    cents = centroids_from_labels(mimg)
    assert [(c["label"], c["name"]) for c in cents] == [(18, "T11"), (19, "T12")]
    o = np.array(img.GetOrigin())
    d = np.array(img.GetDirection()).reshape(3, 3)
    s = np.array(img.GetSpacing())
    for c, src in zip(cents, (33, 32), strict=True):
        idx = np.argwhere(arr == src).mean(axis=0)[::-1]  # z,y,x -> x,y,z
        expect = o + d @ (s * idx)
        assert np.allclose([c["x"], c["y"], c["z"]], expect, atol=1e-6, rtol=0)
    out = tmp_path / "c.json"
    assert (
        cli_main(
            ["centroids", str(real_labels_path), "--label-map", "totalseg_v2", "--out", str(out)]
        )
        == 0
    )
    assert json.loads(out.read_text()) == cents  # JSON floats round-trip exactly
