"""Chain ends the field of view cuts: a neighbour less than half in view is not a level."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ctseg.core.anatomy import natural_step_mm
from ctseg.localisation.cut_levels import drop_cut_ends, edge_margin_mm, one_step_mm


def _ct(z_mm: float, spacing=(2.0, 2.0, 2.5)) -> sitk.Image:
    """An empty CT 100 mm wide in x and y and ``z_mm`` long, voxel centres from z = 0 up
    (the voxel extent reaches half a voxel beyond)."""
    size = [
        int(round(100 / spacing[0])),
        int(round(100 / spacing[1])),
        int(round(z_mm / spacing[2])),
    ]
    img = sitk.Image(size, sitk.sitkUInt8)
    img.SetSpacing(spacing)
    img.SetOrigin((-50.0 + spacing[0] / 2, -50.0 + spacing[1] / 2, 0.0))
    return img


def _chain(labels, z_top: float, scale: float = 1.0) -> list[dict]:
    """Points on the x = y = 0 axis, head first, spaced by the natural step times ``scale``."""
    out, z = [], z_top
    for a, b in zip(labels, [*labels[1:], None], strict=True):
        out.append({"label": a, "world": [0.0, 0.0, z]})
        if b is not None:
            z -= scale * natural_step_mm(a, b)
    return out


def test_edge_margin_is_the_distance_to_the_nearest_face_of_the_voxel_extent():
    ct = _ct(200.0)  # z voxel centres 0 ... 197.5, extent -1.25 ... 198.75
    assert edge_margin_mm(ct, [0.0, 0.0, 100.0]) == pytest.approx(50.0)  # x / y faces at +-50
    assert edge_margin_mm(ct, [0.0, 0.0, 3.75]) == pytest.approx(5.0)
    assert edge_margin_mm(ct, [0.0, 0.0, 198.75]) == pytest.approx(0.0)
    assert edge_margin_mm(ct, [0.0, 60.0, 100.0]) == pytest.approx(-10.0)


def test_one_step_is_the_step_to_the_neighbour_towards_the_chain():
    assert one_step_mm(24, 22) == pytest.approx(natural_step_mm(23, 24))  # L5 -> L4, upwards
    assert one_step_mm(8, 12) == pytest.approx(natural_step_mm(8, 9))  # T1 -> T2, downwards
    assert one_step_mm(25, 24) == pytest.approx(natural_step_mm(24, 25))  # an L6 counts itself


@pytest.mark.parametrize("scale", [0.8, 1.0, 1.25])
def test_a_cut_neighbour_at_either_end_is_dropped_and_whole_levels_are_kept(scale):
    """T12-L5 at a body scale of ``scale``, on a 1 mm grid whose floor lies a tenth of a step
    below L5 and whose top about a tenth of a step above T12: the two ends are cut neighbours
    and are dropped, at every body size; on a grid 0.4 steps beyond each end all six stay."""
    labels = [19, 20, 21, 22, 23, 24]
    for frac, want in ((0.1, [20, 21, 22, 23]), (0.4, labels)):
        bottom = frac * scale * natural_step_mm(23, 24)
        top = frac * scale * natural_step_mm(19, 20)
        pts = _chain(labels, 0.0, scale)
        dz = -0.5 + bottom - pts[-1]["world"][2]  # L5 ``bottom`` mm above the extent's floor
        pts = [{**p, "world": [0.0, 0.0, p["world"][2] + dz]} for p in pts]
        ct = _ct(round(pts[0]["world"][2] + top + 0.5), spacing=(2.0, 2.0, 1.0))
        assert edge_margin_mm(ct, pts[-1]["world"]) == pytest.approx(bottom)
        assert edge_margin_mm(ct, pts[0]["world"]) == pytest.approx(top, abs=0.5)
        assert [p["label"] for p in drop_cut_ends(pts, ct)] == want


def test_with_a_sacrum_only_the_top_end_is_tested_and_short_chains_stay():
    """A sacrum point below L5 means the chain ends in the pelvis, not at a cut: L5 stays even
    near the edge; one vertebra point alone has no step to measure and stays."""
    pts = _chain([23, 24], 80.0)
    l5 = pts[-1]["world"][2]
    ct = _ct(200.0, spacing=(2.0, 2.0, 1.0))
    near = [{**p, "world": [0.0, 0.0, p["world"][2] - l5 + 1.0]} for p in pts]  # L5 1.5 mm in
    assert [p["label"] for p in drop_cut_ends(near, ct)] == [23]
    with_sacrum = [*near, {"label": 26, "world": [0.0, 0.0, 0.2]}]
    assert [p["label"] for p in drop_cut_ends(with_sacrum, ct)] == [23, 24, 26]
    assert drop_cut_ends(near[:1], ct) == near[:1]
    xyz = [{"label": p["label"], **dict(zip("xyz", p["world"], strict=True))} for p in near]
    assert [p["label"] for p in drop_cut_ends(xyz, ct)] == [23]  # x / y / z keys read too
    assert np.isclose(l5, 80.0 - natural_step_mm(23, 24))
