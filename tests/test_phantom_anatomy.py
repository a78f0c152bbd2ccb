"""Phantom anatomy that real scans use to count levels: C1/C2, sacrum, pelvis, ribs, L6/T13.

Expected centroids come from the shapes themselves sampled finely (0.5 mm) in their own local
frame (placed by ``layout_of``, the generator's own layout for that seed), independent of the
phantom's grid, voxel sampling and painting order.
"""

from __future__ import annotations

import numpy as np
import pytest

from ctseg.phantom import PhantomParams, Tissue, generate
from ctseg.phantom.generate import layout_of
from ctseg.phantom.layout import make_layout
from ctseg.phantom.vertebra import geometry_of

CLEAN = {"noise_hu": 0.0, "blur_mm": 0.0}
BASE = {
    **CLEAN,
    "fit": False,
    "body_scale": 1.0,
    "kyphosis_mm": 25.0,
    "lordosis_mm": 15.0,
    "scoliosis_mm": 0.0,
    "cervical_lordosis_mm": 8.0,
}
RIB = (Tissue.RIB_CORTICAL, Tissue.RIB_MARROW)


def _layout(**kw):
    return make_layout(PhantomParams(**{**BASE, **kw}), np.full(7, 0.5))


def _crop(z_top: float, z_bottom: float, spacing: float, half_xy: float = 0.0, **kw) -> dict:
    """Params of a grid from z_bottom to z_top; half_xy > 0: a square around the spine."""
    lay = _layout(**kw)
    x, y = (0.0, -10.0) if half_xy == 0 else lay.spine_xy((z_top + z_bottom) / 2)
    half = half_xy or 200.0
    n_xy = int(2 * half / spacing) + 1
    nz = int((z_top - z_bottom) / spacing) + 1
    origin = (float(x) - half, float(y) - half, z_bottom)
    return {
        **BASE,
        **kw,
        "shape": (n_xy, n_xy, nz),
        "spacing_mm": (spacing,) * 3,
        "origin_mm": origin,
    }


def _expected_centroid(lay, k: int, step: float = 0.5) -> np.ndarray:
    """World centroid of a level's shape, sampled at ``step`` mm in its own frame."""
    g = geometry_of(k)
    lo, hi = g.box()
    u, v, w = np.meshgrid(
        *(np.arange(a, b, step) for a, b in zip(lo, hi, strict=True)), indexing="ij"
    )
    bone = g.bone(u, v, w)
    mean = np.array([u[bone].mean(), v[bone].mean(), w[bone].mean()])
    centre, axes = lay.frame(k)
    return centre + (mean * np.array([lay.s_xy, lay.s_xy, lay.s_z])) @ axes


def _xyz(ph, name: str) -> np.ndarray:
    c = {r["name"]: r for r in ph.centroids}[name]
    return np.array([c["x"], c["y"], c["z"]])


def _world_z(ph) -> np.ndarray:
    return ph.origin[2] + ph.spacing[2] * np.arange(ph.hu.shape[0])


@pytest.fixture(scope="module")
def neck():
    lay = _layout(first_level="C1", last_level="C4")
    top = lay.z_extent(1)[1] + 20.0
    bottom = lay.z_extent(4)[0] - 4.0
    params = _crop(top, bottom, 1.0, half_xy=55.0, first_level="C1", last_level="C4")
    return layout_of(4, params), generate(4, params)


def test_atlas_is_a_ring_and_axis_has_the_dens(neck):
    lay, ph = neck
    assert {1, 2, 3} <= set(np.unique(ph.labels).tolist())
    assert ph.info["visible"][:3] == ["C1", "C2", "C3"]
    # centroids where the shapes put them
    for k, name in ((1, "C1"), (2, "C2"), (3, "C3")):
        np.testing.assert_allclose(_xyz(ph, name), _expected_centroid(lay, k), atol=0.6)
    # C1 has no body: nothing of C1 within 6 mm of its frame centre (the ring's hole) ...
    zz, yy, xx = np.nonzero(ph.labels == 1)
    pts = np.stack([ph.origin[0] + xx, ph.origin[1] + yy, ph.origin[2] + zz], axis=1)
    c1, _ = lay.frame(1)
    assert np.min(np.linalg.norm(pts - c1, axis=1)) > 6.0
    # ... while C2's body fills its centre, and its dens rises into the C1 ring
    c2, _ = lay.frame(2)
    idx = np.rint(np.array(c2) - np.array(ph.origin)).astype(int)
    assert ph.labels[idx[2], idx[1], idx[0]] == 2
    zz, yy, xx = np.nonzero(ph.labels == 2)
    z2 = ph.origin[2] + zz
    dens = z2 > lay.z_extent(2)[1] + 3.0
    assert dens.sum() > 50
    assert z2[dens].max() > c1[2]  # the tip reaches the atlas' mid-height
    dx = ph.origin[0] + xx[dens] - c1[0]
    assert np.abs(dx).max() <= 6.0  # a midline peg, inside the ring's hole
    # C1 is wider than C2 (long transverse processes), C2 taller (dens)
    width = {k: np.ptp(np.nonzero(ph.labels == k)[2]) for k in (1, 2)}
    height = {k: np.ptp(np.nonzero(ph.labels == k)[0]) for k in (1, 2)}
    assert width[1] > width[2] + 10 and height[2] > height[1] + 5


@pytest.fixture(scope="module")
def pelvis():
    lay = _layout(first_level="L4", last_level="S")
    top = lay.z_extent(24)[1] + 4.0
    bottom = lay.z_extent(26)[0] - 40.0
    params = _crop(top, bottom, 2.5, first_level="L4", last_level="S")
    return layout_of(5, params), generate(5, params)


def test_sacrum_is_label_26_below_l5_and_pelvis_is_unlabelled_bone(pelvis):
    lay, ph = pelvis
    assert ph.info["visible"] == ["L5", "sacrum"]
    assert 26 in np.unique(ph.labels) and 24 in np.unique(ph.labels)
    sac, l5 = _xyz(ph, "sacrum"), _xyz(ph, "L5")
    np.testing.assert_allclose(sac, _expected_centroid(lay, 26), atol=1.0)
    assert 30.0 < l5[2] - sac[2] < 90.0  # below L5
    assert sac[1] > l5[1] + 5.0  # and behind it: the sacrum tilts back
    assert abs(sac[0] - l5[0]) < 1.0  # on the midline without scoliosis
    # pelvis: bone HU, wide, never labelled, not touching the sacrum label
    bone = np.isin(ph.tissue, [Tissue.BONE_CORTICAL, Tissue.BONE_MARROW])
    assert bone.sum() > 2000 and not ph.labels[bone].any()
    xs = ph.origin[0] + ph.spacing[0] * np.nonzero(bone.any(axis=(0, 1)))[0]
    assert xs.min() < sac[0] - 100 and xs.max() > sac[0] + 100  # iliac wings, hips
    hu = ph.hu[ph.tissue == Tissue.BONE_CORTICAL]
    assert hu.min() == hu.max() == 1200
    # no unlabelled vertebral bone except the partly seen L4 at the top edge
    stray = np.isin(ph.tissue, [Tissue.CORTICAL, Tissue.CANCELLOUS]) & (ph.labels == 0)
    assert not stray[_world_z(ph) < lay.z_extent(24)[0]].any()


def test_l6_is_label_25_between_l5_and_sacrum():
    lay = _layout(first_level="L4", last_level="S", transitional="L6")
    top = lay.z_extent(24)[1] + 4.0
    bottom = lay.z_extent(26)[0] - 5.0
    params = _crop(top, bottom, 3.0, first_level="L4", last_level="S", transitional="L6")
    lay, ph = layout_of(5, params), generate(5, params)
    assert ph.info["visible"] == ["L5", "L6", "sacrum"]
    assert {24, 25, 26} <= set(np.unique(ph.labels).tolist())
    l5, l6, s = _xyz(ph, "L5"), _xyz(ph, "L6"), _xyz(ph, "sacrum")
    assert l5[2] > l6[2] > s[2]
    np.testing.assert_allclose(l6, _expected_centroid(lay, 25), atol=1.0)
    assert 25.0 < l5[2] - l6[2] < 45.0  # one lumbar level lower


def _rib_heads(ph, lay, k) -> int:
    """Rib voxels beside level k's transverse processes (rib heads / necks)."""
    c, _ = lay.frame(k)
    lo, hi = lay.z_extent(k)
    zz, yy, xx = np.nonzero(np.isin(ph.tissue, RIB))
    x = ph.origin[0] + ph.spacing[0] * xx
    y = ph.origin[1] + ph.spacing[1] * yy
    z = ph.origin[2] + ph.spacing[2] * zz
    near = (np.abs(np.abs(x - c[0]) - 38.0) < 10.0) & (np.abs(y - c[1] - 25.0) < 20.0)
    return int(np.sum(near & (z > lo) & (z < hi)))


@pytest.mark.parametrize(
    ("transitional", "with_ribs", "without"),
    [
        ("none", [17, 18, 19], [20]),
        ("T13", [18, 19, 28], [20]),
        ("T12_no_ribs", [17, 18], [19, 20]),
    ],
)
def test_ribs_end_at_the_last_thoracic_level(transitional, with_ribs, without):
    kw = {"first_level": "T10", "last_level": "L2", "transitional": transitional}
    lay = _layout(**kw)
    top, bottom = lay.z_extent(17)[1] + 2.0, lay.z_extent(21)[0] - 2.0
    params = _crop(top, bottom, 2.0, **kw)
    lay, ph = layout_of(6, params), generate(6, params)
    for k in with_ribs:
        assert _rib_heads(ph, lay, k) > 20, k
    for k in without:
        assert _rib_heads(ph, lay, k) == 0, k
    rib = np.isin(ph.tissue, RIB)
    assert not ph.labels[rib].any()
    if transitional == "T13":
        assert 28 in np.unique(ph.labels)
        t12, t13, l1 = _xyz(ph, "T12"), _xyz(ph, "T13"), _xyz(ph, "L1")
        assert t12[2] > t13[2] > l1[2]
        np.testing.assert_allclose(t13, _expected_centroid(lay, 28), atol=1.0)
        assert ph.info["rib_levels"][-1] == "T13"
    else:
        assert 28 not in np.unique(ph.labels)


def test_lungs_end_near_the_diaphragm_and_not_in_the_neck():
    kw = {"first_level": "C5", "last_level": "L2"}
    lay = _layout(**kw)
    top, bottom = lay.z_extent(5)[1] + 2.0, lay.z_extent(21)[0] - 2.0
    params = _crop(top, bottom, 5.0, **kw)
    lay, ph = layout_of(8, params), generate(8, params)
    z = _world_z(ph)[np.nonzero((ph.tissue == Tissue.LUNG).any(axis=(1, 2)))[0]]
    assert lay.z_extent(19)[0] - 5 < z.min() < lay.z_c[17]  # lung bases at T10-T12
    assert z.max() <= lay.z_extent(8)[1] + 1  # apices at the T1 top, not in the neck
    # the neck is narrower than the chest
    body = ~np.isin(ph.tissue, [Tissue.AIR, Tissue.TABLE])
    width = body.sum(axis=2).max(axis=1) * ph.spacing[0]
    k_neck = int(np.argmin(np.abs(_world_z(ph) - lay.z_c[5])))
    k_chest = int(np.argmin(np.abs(_world_z(ph) - lay.z_c[13])))
    assert width[k_neck] < 0.5 * width[k_chest]
