"""Per-vertebra statistics on a box spine of known geometry and density."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from ctseg.formats.vertebra_stats import totalseg_style, vertebra_statistics, write_statistics

SP = (0.5, 0.8, 2.0)


def box_case():
    """RAS-stored grid (axes point R, A, S): L2 cut by the inferior edge, L1 above it."""
    lab = np.zeros((20, 30, 40), np.uint8)  # [k, j, i]
    hu = np.full(lab.shape, -100, np.int16)
    lab[8:14, 10:20, 5:25] = 20  # L1: 6 x 10 x 20 voxels
    hu[8:14, 10:20, 5:25] = 300
    hu[8:14, 16:20, 5:25] = 500  # j runs anterior: rows 16-19 are the front 40 % (the "body")
    lab[0:5, 12:18, 6:24] = 21  # L2: touches k = 0, the inferior face
    hu[0:5, 12:18, 6:24] = np.arange(5, dtype=np.int16)[:, None, None] * 100 + 200  # 200..600
    metal = np.zeros(lab.shape, np.uint8)
    metal[9, 12, 6:10] = 1  # 4 voxels of screw inside L1
    metal[18, 0, 0] = 1  # and one outside any vertebra
    imgs = []
    for a in (lab, hu, metal):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing(SP)
        img.SetOrigin((20.0, 30.0, -500.0))
        img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        imgs.append(img)
    return imgs


def test_statistics_of_boxes():
    labels, ct, metal = box_case()
    st = vertebra_statistics(labels, ct, metal=metal)
    v = 0.5 * 0.8 * 2.0
    assert st["voxel_volume_mm3"] == pytest.approx(v)
    l1, l2 = st["levels"]
    assert (l1["name"], l2["name"]) == ("L1", "L2")
    assert l1["voxels"] == 6 * 10 * 20 and l1["volume_mm3"] == pytest.approx(1200 * v)
    assert l1["volume_ml"] == pytest.approx(1200 * v / 1000)
    assert l1["hu_mean"] == pytest.approx(380) and l1["hu_median"] == 300
    assert l1["hu_std"] == pytest.approx(np.std([500] * 4 + [300] * 6))
    assert l1["body_hu_mean"] == 500 and l1["body_hu_median"] == 500
    assert l2["hu_mean"] == pytest.approx(400) and l2["hu_median"] == 400
    centre = labels.TransformContinuousIndexToPhysicalPoint((14.5, 14.5, 10.5))
    assert np.allclose(l1["centroid"], centre)
    assert l1["bbox_index_min"] == [5, 10, 8] and l1["bbox_index_max"] == [24, 19, 13]
    lo = np.minimum(
        labels.TransformIndexToPhysicalPoint((5, 10, 8)),
        labels.TransformIndexToPhysicalPoint((24, 19, 13)),
    )
    assert np.allclose(l1["bbox_world_min"], lo)
    # the spine runs along k (superior): heights are the boxes' k extents
    assert l1["height_mm"] == pytest.approx(6 * 2.0)
    assert l2["height_mm"] == pytest.approx(5 * 2.0)
    assert not l1["touches_fov_edge"] and l1["fov_edges"] == []
    assert l2["touches_fov_edge"] and l2["fov_edges"] == ["inferior"]
    assert l1["metal_voxels"] == 4 and l2["metal_voxels"] == 0
    assert st["metal"] == {
        "metal_voxels": 5,
        "metal_ml": pytest.approx(5 * v / 1000),
        "levels_with_metal": ["L1"],
    }
    assert totalseg_style(st) == {"L1": {"volume": pytest.approx(1200 * v), "intensity": pytest.approx(380.0)},
                                  "L2": {"volume": pytest.approx(540 * v), "intensity": pytest.approx(400.0)}}  # fmt: skip


def test_lone_level_height_uses_the_superior_axis_and_sides_are_named():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[2:5, 0:3, 6:10] = 22  # touches j = 0 and i = 9
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing((1.0, 1.0, 3.0))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    (row,) = vertebra_statistics(img)["levels"]
    assert row["height_mm"] == pytest.approx(9.0) and row["hu_mean"] is None
    # i axis points R: its max face is the right side; j points A: min face is posterior
    assert sorted(row["fov_edges"]) == ["posterior", "right"]


def test_statistics_files(tmp_path):
    labels, ct, _ = box_case()
    st = vertebra_statistics(labels, ct)
    write_statistics(st, tmp_path / "s.json", tmp_path / "s.tsv")
    assert json.loads((tmp_path / "s.json").read_text())["levels"][0]["name"] == "L1"
    rows = list(csv.DictReader(open(tmp_path / "s.tsv"), delimiter="\t"))
    assert [r["name"] for r in rows] == ["L1", "L2"]
    assert float(rows[1]["hu_median"]) == 400 and rows[1]["fov_edges"] == "inferior"
    assert rows[0]["metal_ml"] == ""
