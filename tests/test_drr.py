"""DRR: geometry against trigonometry, physics against analytic chords, label projection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from ctseg.cli import main as cli_main
from ctseg.core.errors import InputError
from ctseg.drr import (
    DrrOutputs,
    View,
    VolumeGeometry,
    project_binary,
    project_labels,
    project_points,
    raycast,
    run_drr,
    run_drr_views,
    stack_views,
    view_frame,
)
from ctseg.drr.attenuation import bone_hu, hu_to_mu, mu

torch.set_num_threads(1)


def make_image(arr_zyx: np.ndarray, spacing, origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        img.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    return img


def rotation(axis, angle_deg) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = math.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def expected_pixel(point, iso, angle_deg, sdd, sid, cols, rows, sp) -> tuple[float, float]:
    """Independent pin-hole formula: rotate into the gantry frame, magnify by sdd/(sid - depth)."""
    t = math.radians(angle_deg)
    q = np.asarray(point, float) - np.asarray(iso, float)
    depth = q[0] * math.sin(t) - q[1] * math.cos(t)  # towards the source
    lateral = q[0] * math.cos(t) + q[1] * math.sin(t)
    mag = sdd / (sid - depth)
    return (rows - 1) / 2 + (-q[2]) * mag / sp, (cols - 1) / 2 + lateral * mag / sp


def centroid(img: np.ndarray) -> tuple[float, float]:
    r, c = np.indices(img.shape)
    w = np.clip(img, 0, None)
    return float((r * w).sum() / w.sum()), float((c * w).sum() / w.sum())


# --------------------------------------------------------------------------- geometry


def test_view_from_dict_scalar_and_pairs():
    v = View.from_dict(
        {
            "name": "ap",
            "angle_deg": 0,
            "sdd_mm": 1000,
            "sid_mm": 750,
            "size_px": 128,
            "spacing_mm": 3,
        }
    )
    assert v.size_px == (128, 128) and v.spacing_mm == (3.0, 3.0)
    v2 = View.from_dict(
        {
            "name": "x",
            "angle_deg": 90,
            "sdd_mm": 1000,
            "sid_mm": 750,
            "size_px": [64, 32],
            "spacing_mm": [1, 2],
        }
    )
    assert (v2.cols, v2.rows) == (64, 32) and v2.spacing_mm == (1.0, 2.0)
    with pytest.raises(InputError):
        View.from_dict({"name": "bad", "sdd_mm": 500, "sid_mm": 750, "size_px": 8, "spacing_mm": 1})
    with pytest.raises(InputError):
        View.from_dict({"name": "bad", "sdd_mm": 500})


def test_frame_conventions():
    v = View.from_dict({"sdd_mm": 1000, "sid_mm": 750, "size_px": 4, "spacing_mm": 1})
    f = view_frame(v, np.zeros(3))
    np.testing.assert_allclose(f.source, [0, -750, 0], atol=1e-9)  # anterior (LPS: -y)
    np.testing.assert_allclose(f.detector_center, [0, 250, 0], atol=1e-9)
    f90 = view_frame(
        View.from_dict({**v.__dict__, "angle_deg": 90, "size_px": 4, "spacing_mm": 1}), np.zeros(3)
    )
    np.testing.assert_allclose(f90.source, [750, 0, 0], atol=1e-9)  # patient's left (+x)


@pytest.mark.parametrize("angle", [0.0, 90.0, 30.0, 200.0])
def test_project_points_matches_trigonometry(angle):
    v = View.from_dict(
        {"angle_deg": angle, "sdd_mm": 1100, "sid_mm": 800, "size_px": [50, 40], "spacing_mm": 1.5}
    )
    iso = np.array([3.0, -7.0, 11.0])
    pts = np.array([[10.0, 20.0, -5.0], [-30.0, 4.0, 25.0], [0.0, 0.0, 0.0]]) + iso
    got = project_points(v, view_frame(v, iso), pts)
    for p, g in zip(pts, got, strict=True):
        np.testing.assert_allclose(
            g, expected_pixel(p, iso, angle, 1100, 800, 50, 40, 1.5), atol=1e-9
        )


def _bead_render(angle: float, direction=None, spacing=(2.0, 2.0, 2.0), bead=(20, 11, 9)):
    size = (32, 30, 28)  # x, y, z
    arr = np.zeros(size[::-1], np.float32)
    arr[bead[2], bead[1], bead[0]] = 1.0
    img = make_image(arr, spacing, origin=(-12.0, 30.0, 100.0), direction=direction)
    view = View.from_dict(
        {"angle_deg": angle, "sdd_mm": 1000, "sid_mm": 750, "size_px": 96, "spacing_mm": 1.0}
    )
    geom = VolumeGeometry.from_image(img)
    li = raycast(arr, geom, view, device="cpu").line_integrals[0]
    world = np.array(img.TransformContinuousIndexToPhysicalPoint(bead))
    iso = np.array(img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size]))
    return li, world, iso


@pytest.mark.parametrize("angle", [0.0, 90.0, 30.0, 200.0])
@pytest.mark.parametrize("bead", [(20, 11, 9), (5, 25, 22)])
def test_bead_projects_to_predicted_pixel(angle, bead):
    li, world, iso = _bead_render(angle, bead=bead)
    exp = expected_pixel(world, iso, angle, 1000, 750, 96, 96, 1.0)
    got = centroid(li)
    assert abs(got[0] - exp[0]) < 0.5 and abs(got[1] - exp[1]) < 0.5, (got, exp)
    # The integral of the bead (1/mm * 8 mm^3) is conserved: sum * pixel area at the bead
    # (within the aliasing of sampling a one-voxel tent on a 0.75 mm pixel lattice, ~3%).
    mag = 1000 / (
        750
        - (np.array(world) - iso)
        @ np.array([math.sin(math.radians(angle)), -math.cos(math.radians(angle)), 0])
    )
    assert li.sum() / mag**2 == pytest.approx(8.0, rel=0.05)


@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_bead_in_oblique_anisotropic_volume(angle):
    direction = rotation([1.0, 2.0, 0.5], 25.0)
    li, world, iso = _bead_render(angle, direction=direction, spacing=(2.0, 2.5, 3.0))
    exp = expected_pixel(world, iso, angle, 1000, 750, 96, 96, 1.0)
    got = centroid(li)
    assert abs(got[0] - exp[0]) < 0.5 and abs(got[1] - exp[1]) < 0.5, (got, exp)


# --------------------------------------------------------------------------- physics


def test_attenuation_model_values():
    assert mu("water", 70) == pytest.approx(0.01929, rel=0.005)  # XCOM 0.1929 cm^2/g
    assert mu("water", 60) == pytest.approx(0.02059, rel=1e-9)  # tabulated point
    hu = np.array([-1000.0, -2000.0, -500.0, 0.0, 1000.0, 2000.0])
    m70 = hu_to_mu(hu, 70)
    mw = mu("water", 70)
    assert m70[0] == 0 and m70[1] == 0  # air and below clip to 0
    np.testing.assert_allclose(m70[2:], mw * (1 + hu[2:] / 1000), rtol=1e-5)  # linear at E = E_ct
    # At 40 keV (a low spectral bin) bone's photo-electric excess steepens the slope above 0 HU.
    m40 = hu_to_mu(np.array([-500.0, 0.0, 1000.0]), 40)
    below = (m40[1] - m40[0]) / 500
    above = (m40[2] - m40[1]) / 1000
    assert above / below == pytest.approx(
        (mu("bone", 40) / mu("water", 40) - 1) / (bone_hu(70) / 1000), rel=1e-4
    )
    assert above > 1.5 * below
    # Metal-mask voxels above 1000 HU take titanium's attenuation (CT numbers saturate).
    mm = hu_to_mu(np.array([3071.0, 500.0]), 70, metal=np.array([1, 1]))
    assert mm[0] == pytest.approx(mu("titanium", 70), rel=1e-6)
    assert mm[1] == pytest.approx(mw * 1.5, rel=1e-5)


def _cylinder_volume(radius=40.0, n=100, nz=24, sup=4):
    """Water cylinder along z with partial-volume edges (sub-voxel supersampling), HU."""
    c = (n - 1) / 2
    sub = (np.arange(sup) + 0.5) / sup - 0.5
    x = (np.arange(n)[:, None] + sub[None, :]).ravel() - c
    inside = (x[:, None] ** 2 + x[None, :] ** 2) <= radius**2
    frac = inside.reshape(n, sup, n, sup).mean(axis=(1, 3))  # [y, x]
    hu = (-1000.0 + 1000.0 * frac).astype(np.float32)
    return np.repeat(hu[None], nz, axis=0)


@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_water_cylinder_matches_analytic_chords(angle):
    R = 40.0
    hu = _cylinder_volume(R)
    img = make_image(hu, (1.0, 1.0, 1.0), origin=(-49.5, -49.5, -11.5))
    geom = VolumeGeometry.from_image(img)
    view = View.from_dict(
        {
            "angle_deg": angle,
            "sdd_mm": 1000,
            "sid_mm": 750,
            "size_px": [90, 5],
            "spacing_mm": [1.3, 2.0],
        }
    )
    li = raycast(hu_to_mu(hu, 70), geom, view, device="cpu").line_integrals[0]
    frame = view_frame(view, geom.center)
    np.testing.assert_allclose(geom.center, 0, atol=1e-9)
    from ctseg.drr.geometry import pixel_centers

    pix = pixel_centers(view, frame)
    s = frame.source
    d3 = pix - s
    dxy = d3[..., :2]
    # distance of the ray's xy projection from the axis (x = y = 0), then 3D chord
    dist = np.abs(dxy[..., 0] * (0 - s[1]) - dxy[..., 1] * (0 - s[0])) / np.linalg.norm(
        dxy, axis=-1
    )
    chord_xy = 2 * np.sqrt(np.clip(R**2 - dist**2, 0, None))
    chord = chord_xy * np.linalg.norm(d3, axis=-1) / np.linalg.norm(dxy, axis=-1)
    expected = mu("water", 70) * chord
    sel = dist < 0.9 * R
    assert sel.sum() > 200
    rel = np.abs(li[sel] - expected[sel]) / expected[sel]
    assert rel.max() < 0.01, rel.max()
    assert np.all(li[dist > R + 1.5] < 1e-6)  # rays missing the cylinder see air only


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(0)
    vol = rng.random((20, 24, 28)).astype(np.float32) * 0.02
    img = make_image(vol, (1.5, 1.2, 2.0), origin=(5, -3, 40), direction=rotation([0, 0, 1], 10))
    geom = VolumeGeometry.from_image(img)
    lab = (rng.random(vol.shape) * 4).astype(np.uint8)
    view = View.from_dict(
        {"angle_deg": 40, "sdd_mm": 900, "sid_mm": 600, "size_px": [40, 36], "spacing_mm": 1.7}
    )
    big = raycast(vol, geom, view, labels=lab, max_samples=2**24, device="cpu")
    small = raycast(vol, geom, view, labels=lab, max_samples=500, device="cpu")
    assert big.line_integrals.max() > 0.1
    np.testing.assert_allclose(small.line_integrals, big.line_integrals, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(small.label_paths, big.label_paths, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cpu_and_cuda_agree():
    rng = np.random.default_rng(1)
    vol = rng.random((30, 32, 34)).astype(np.float32) * 0.02
    lab = (rng.random(vol.shape) * 3).astype(np.uint8)
    geom = VolumeGeometry.from_image(make_image(vol, (1.0, 1.1, 1.3)))
    view = View.from_dict(
        {"angle_deg": 15, "sdd_mm": 1000, "sid_mm": 750, "size_px": 48, "spacing_mm": 1.2}
    )
    cpu = raycast(vol, geom, view, labels=lab, device="cpu")
    gpu = raycast(vol, geom, view, labels=lab, device="cuda")
    np.testing.assert_allclose(gpu.line_integrals, cpu.line_integrals, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gpu.label_paths, cpu.label_paths, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- labels


def _box_chords(view: View, geom: VolumeGeometry, lo, hi) -> np.ndarray:
    """Exact chord (mm) of every detector ray through the world box [lo, hi] (slab method)."""
    from ctseg.drr.geometry import pixel_centers

    frame = view_frame(view, geom.center)
    pix = pixel_centers(view, frame)
    d = pix - frame.source
    with np.errstate(divide="ignore"):
        t1 = (np.asarray(lo) - frame.source) / d
        t2 = (np.asarray(hi) - frame.source) / d
    tn = np.minimum(t1, t2).max(axis=-1)
    tf = np.maximum(t1, t2).min(axis=-1)
    return np.clip(tf - tn, 0, None) * np.linalg.norm(d, axis=-1)


def test_cube_projects_to_predicted_square():
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[12:28, 12:28, 12:28] = 20  # L1, a 16 mm cube
    geom = VolumeGeometry.from_image(make_image(lab, (1.0, 1.0, 1.0)))
    view = View.from_dict({"sdd_mm": 1000, "sid_mm": 750, "size_px": 64, "spacing_mm": 1.0})
    proj = project_labels(lab, geom, view, min_path_mm=2.0, device="cpu")
    chord = _box_chords(view, geom, [11.5] * 3, [27.5] * 3)
    expected = chord >= 2.0
    clear = np.abs(chord - 2.0) > 0.6  # away from the threshold by more than one step
    assert expected.sum() > 300
    np.testing.assert_array_equal((proj.multiclass == 20)[clear], expected[clear])
    assert set(np.unique(proj.multiclass)) == {0, 20}
    np.testing.assert_array_equal(proj.bone, proj.multiclass > 0)
    rows, cols = np.nonzero(proj.multiclass)
    h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert h == w  # a square footprint
    # 16 mm at the cube's entrance face (magnification 1000 / (750 - 8.5)) within one pixel
    assert abs(w - 16 * 1000 / 741.5) <= 1.0
    np.testing.assert_allclose(proj.paths[0][expected & clear], chord[expected & clear], atol=0.75)


def test_longest_path_wins_and_bone_sums_paths():
    lab = np.zeros((40, 50, 50), np.uint8)  # z, y, x; rays run along +y at angle 0
    lab[10:30, 5:10, 10:30] = 8  # T1: 5 mm thick, x 10..29
    lab[10:30, 20:35, 20:35] = 9  # T2: 15 mm thick, x 20..34
    lab[32:38, 30:31, 40:45] = 10  # T3: 1 mm thin ...
    lab[32:38, 40:41, 40:45] = 11  # ... behind T4: 1 mm thin
    img = make_image(lab, (1.0, 1.0, 1.0))
    geom = VolumeGeometry.from_image(img)
    view = View.from_dict({"sdd_mm": 2000, "sid_mm": 1900, "size_px": 64, "spacing_mm": 1.0})
    proj = project_labels(lab, geom, view, min_path_mm=1.5, device="cpu")
    frame = view_frame(view, geom.center)

    def at(x, y, z):
        r, c = np.round(project_points(view, frame, np.array([[x, y, z]]))[0]).astype(int)
        return proj.multiclass[r, c], proj.bone[r, c]

    assert at(14, 7, 20) == (8, 1)  # only T1
    assert at(25, 7, 20) == (9, 1)  # T1 (5 mm) and T2 (15 mm) overlap: the thicker T2 wins
    assert at(32, 27, 20) == (9, 1)  # only T2
    assert at(42, 35, 35) == (0, 1)  # two 1 mm paths: no single label, but 2 mm >= 1.5 of bone
    assert at(5, 7, 5) == (0, 0)
    metal = np.zeros_like(lab)
    metal[10:30, 20:35, 20:35] = 1
    m2d = project_binary(metal, geom, view, min_path_mm=1.5, device="cpu")
    np.testing.assert_array_equal(m2d, proj.multiclass == 9)


# --------------------------------------------------------------------------- files, CLI


def _bead_ct(tmp_path):
    """Air CT with a bone ball above (superior to) and left of the isocentre, a label, metal."""
    hu = np.full((40, 36, 32), -1000, np.int16)  # z, y, x at 3 mm
    zz, yy, xx = np.indices(hu.shape)
    ball = (zz - 30) ** 2 + (yy - 18) ** 2 + (xx - 24) ** 2 <= 9
    hu[ball] = 1200
    ct = make_image(hu, (3.0, 3.0, 3.0), origin=(-40, -50, 900))
    lab = sitk.Cast(
        make_image(ball.astype(np.uint8) * 20, (3.0, 3.0, 3.0), origin=(-40, -50, 900)),
        sitk.sitkUInt8,
    )
    paths = {"ct": tmp_path / "ct.nii.gz", "labels": tmp_path / "labels.nii.gz"}
    sitk.WriteImage(ct, str(paths["ct"]))
    sitk.WriteImage(lab, str(paths["labels"]))
    return paths


def test_run_drr_outputs_orientation(tmp_path):
    p = _bead_ct(tmp_path)
    view = {
        "name": "ap",
        "angle_deg": 0,
        "sdd_mm": 1000,
        "sid_mm": 750,
        "size_px": [80, 72],
        "spacing_mm": 2.5,
    }
    out = tmp_path / "drr"
    run_drr(
        p["ct"],
        p["labels"],
        None,
        view,
        out / "ap.nii.gz",
        out / "ap_label.nii.gz",
        out / "ap.png",
        energy_kev=70,
        min_path_mm=2.0,
        device="cpu",
    )
    img = sitk.ReadImage(str(out / "ap.nii.gz"))
    assert img.GetDimension() == 2 and img.GetSize() == (80, 72)
    assert img.GetSpacing() == (2.5, 2.5)
    arr = sitk.GetArrayFromImage(img)
    assert arr.dtype == np.float32
    r, c = np.unravel_index(np.argmax(arr), arr.shape)
    assert r < 36 and c > 40  # superior -> upper half; patient's left -> right half in AP
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ap_label.nii.gz")))
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 20}
    assert lab[r, c] == 20
    png = np.asarray(Image.open(out / "ap.png"))
    assert png.shape[:2] == (72, 80 + 2 + 80)
    left = png[:, :80].mean(axis=2) if png.ndim == 3 else png[:, :80]
    pr, pc = np.unravel_index(np.argmax(left), left.shape)
    assert pr < 36 and abs(pr - r) <= 1 and abs(pc - c) <= 1
    assert np.any(png[:, 82:, :3].std(axis=2) > 0)  # coloured outlines on the right panel
    assert not list(out.glob(".*"))  # no temp leftovers


def test_run_drr_rejects_labels_off_grid(tmp_path):
    p = _bead_ct(tmp_path)
    other = make_image(np.zeros((10, 10, 10), np.uint8), (1, 1, 1))
    bad = tmp_path / "bad_labels.nii.gz"
    sitk.WriteImage(other, str(bad))
    out = tmp_path / "o"
    view = {"sdd_mm": 1000, "sid_mm": 750, "size_px": 16, "spacing_mm": 4}
    with pytest.raises(InputError, match="bad_labels"):
        run_drr(
            p["ct"], bad, None, view, out / "a.nii.gz", out / "a_l.nii.gz", out / "a.png", case="c1"
        )
    assert not (out / "a.nii.gz").exists()


def test_run_drr_views_equals_one_run_per_view(tmp_path):
    """The drr rule's read-once path writes exactly what rendering each view alone writes."""
    p = _bead_ct(tmp_path)
    ct = sitk.ReadImage(str(p["ct"]))
    metal = sitk.GetArrayFromImage(sitk.ReadImage(str(p["labels"]))) > 0
    metal[:, :, :24] = False  # half the ball is an implant
    metal_img = sitk.Cast(sitk.GetImageFromArray(metal.astype(np.uint8)), sitk.sitkUInt8)
    metal_img.CopyInformation(ct)
    p["metal"] = tmp_path / "metal.nii.gz"
    sitk.WriteImage(metal_img, str(p["metal"]))
    views = [
        {
            "name": "ap",
            "angle_deg": 0,
            "sdd_mm": 1000,
            "sid_mm": 750,
            "size_px": 48,
            "spacing_mm": 3,
        },
        {
            "name": "lat",
            "angle_deg": 90,
            "sdd_mm": 1000,
            "sid_mm": 750,
            "size_px": [40, 44],
            "spacing_mm": 3,
        },
    ]
    both, alone = tmp_path / "both", tmp_path / "alone"
    outs = {
        d: [
            DrrOutputs(
                d / f"{v['name']}.nii.gz", d / f"{v['name']}_l.nii.gz", d / f"{v['name']}.png"
            )
            for v in views
        ]
        for d in (both, alone)
    }
    run_drr_views(p["ct"], p["labels"], p["metal"], views, outs[both], device="cpu", case="c1")
    for v, o in zip(views, outs[alone], strict=True):
        run_drr(p["ct"], p["labels"], p["metal"], v, o.nii, o.label_nii, o.png, device="cpu")
    for a, b in zip(outs[both], outs[alone], strict=True):
        for f in ("nii", "label_nii"):
            ia, ib = sitk.ReadImage(str(getattr(a, f))), sitk.ReadImage(str(getattr(b, f)))
            assert ia.GetSize() == ib.GetSize() and ia.GetSpacing() == ib.GetSpacing()
            np.testing.assert_array_equal(sitk.GetArrayFromImage(ia), sitk.GetArrayFromImage(ib))
        np.testing.assert_array_equal(np.asarray(Image.open(a.png)), np.asarray(Image.open(b.png)))
    lat = sitk.GetArrayFromImage(sitk.ReadImage(str(outs[both][1].label_nii)))
    assert lat.shape == (44, 40) and set(np.unique(lat)) == {0, 20}
    # the metal outline (pure red) is drawn on the overlay panel of both views
    for o, w in zip(outs[both], (48, 40), strict=True):
        over = np.asarray(Image.open(o.png))[:, w + 2 :, :3]
        assert np.any(np.all(over == (255, 0, 0), axis=2))


def test_run_drr_views_bad_view_writes_nothing(tmp_path):
    p = _bead_ct(tmp_path)
    good = {"name": "ap", "sdd_mm": 1000, "sid_mm": 750, "size_px": 16, "spacing_mm": 4}
    bad = {
        "name": "lat",
        "angle_deg": 90,
        "sdd_mm": 700,
        "sid_mm": 750,
        "size_px": 16,
        "spacing_mm": 4,
    }
    out = tmp_path / "o"
    outs = [
        DrrOutputs(out / f"{n}.nii.gz", out / f"{n}_l.nii.gz", out / f"{n}.png")
        for n in ("ap", "lat")
    ]
    with pytest.raises(InputError, match="sdd|sid|source"):
        run_drr_views(p["ct"], p["labels"], None, [good, bad], outs, device="cpu", case="c1")
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(ValueError, match="2 views but 1 output"):
        run_drr_views(p["ct"], p["labels"], None, [good, good], outs[:1], device="cpu")


def test_stack_views(tmp_path):
    paths = []
    for i in range(3):
        img = sitk.GetImageFromArray(np.full((6, 8), i, np.uint8))
        img.SetSpacing((1.5, 2.0))
        paths.append(tmp_path / f"v{i}.nii.gz")
        sitk.WriteImage(img, str(paths[-1]))
    out = tmp_path / "stack.nii.gz"
    stack_views(paths, out)
    st = sitk.ReadImage(str(out))
    assert st.GetSize() == (8, 6, 3) and st.GetSpacing() == (1.5, 2.0, 1.0)
    arr = sitk.GetArrayFromImage(st)
    assert arr.dtype == np.uint8 and [arr[i].max() for i in range(3)] == [0, 1, 2]
    odd = tmp_path / "odd.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 8), np.uint8)), str(odd))
    with pytest.raises(InputError, match="odd"):
        stack_views([*paths, odd], tmp_path / "s2.nii.gz")


def test_cli_drr(tmp_path):
    p = _bead_ct(tmp_path)
    out = tmp_path / "cli.nii.gz"
    rc = cli_main(
        [
            "drr",
            str(p["ct"]),
            "--out",
            str(out),
            "--angle",
            "90",
            "--size",
            "40",
            "32",
            "--spacing",
            "3",
            "--png",
            str(tmp_path / "cli.png"),
            "--labels",
            str(p["labels"]),
            "--label-out",
            str(tmp_path / "cli_l.nii.gz"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert arr.shape == (32, 40)
    r, c = np.unravel_index(np.argmax(arr), arr.shape)
    # At 90 degrees the source is at the patient's left; the ball (y index 18 of 36, centred in
    # AP) lands near the middle column, superior -> upper half.
    assert r < 16 and abs(c - 19.5) <= 2
    assert (tmp_path / "cli.png").is_file() and (tmp_path / "cli_l.nii.gz").is_file()
    assert (
        cli_main(["drr", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "x.nii.gz")])
        == 1
    )


def test_render_view_one_pass_matches_separate_projections():
    rng = np.random.default_rng(5)
    lab = np.zeros((30, 32, 34), np.uint8)
    lab[5:15, 8:20, 6:20] = 20
    lab[15:25, 10:24, 10:26] = 21
    metal = np.zeros_like(lab)
    metal[8:22, 12:16, 12:14] = 1  # a screw crossing both vertebrae
    hu = np.where(lab > 0, 700, -1000).astype(np.int16) + rng.integers(-5, 5, lab.shape).astype(
        np.int16
    )
    hu[metal > 0] = 3071
    spacing = (1.5, 1.5, 1.5)
    ct = make_image(hu, spacing)
    view = {"angle_deg": 30, "sdd_mm": 1000, "sid_mm": 700, "size_px": 48, "spacing_mm": 1.5}
    from ctseg.drr import render_view

    li, proj, m2d = render_view(
        ct, view, labels=make_image(lab, spacing), metal=make_image(metal, spacing), device="cpu"
    )
    geom, v = VolumeGeometry.from_image(ct), View.from_dict(view)
    ref = project_labels(lab, geom, v, min_path_mm=2.0, device="cpu")
    np.testing.assert_array_equal(proj.multiclass, ref.multiclass)
    np.testing.assert_allclose(proj.paths, ref.paths, atol=1e-4)
    np.testing.assert_array_equal(
        m2d, project_binary(metal, geom, v, min_path_mm=2.0, device="cpu")
    )
    assert m2d.sum() > 10
    # Titanium behind the screw: far more attenuation than the same path of 3071 HU "bone".
    plain = raycast(hu_to_mu(hu, 70), geom, v, device="cpu").line_integrals[0]
    assert np.all(li[m2d > 0] > plain[m2d > 0])
    # Rays that come nowhere near the screw (dilated by the trilinear reach) are unchanged.
    from scipy import ndimage

    near = ndimage.binary_dilation(metal > 0, iterations=2)
    far = project_binary(near, geom, v, min_path_mm=1e-6, device="cpu") == 0
    assert far.sum() > 1000
    np.testing.assert_allclose(li[far], plain[far], rtol=1e-5, atol=1e-6)


@pytest.mark.real
def test_real_series_projects_t11_t12(real_series_dir, real_labels_path, tmp_path):
    """The real 20-slice CT: T11/T12 (TotalSegmentator 33/32) project as VerSe 18/19 where
    the bone is, and the line integrals are finite and bone-bright there."""
    from ctseg.core.labels import TOTALSEG_V2_TO_VERSE
    from ctseg.ingest.volume import read_image

    ct, _ = read_image(real_series_dir, progress=False)
    ts = sitk.ReadImage(str(real_labels_path))
    arr = sitk.GetArrayFromImage(ts)
    lut = np.zeros(int(arr.max()) + 1, np.uint8)
    for src, dst in TOTALSEG_V2_TO_VERSE.items():
        if src < lut.size:
            lut[src] = dst
    verse = sitk.GetImageFromArray(lut[arr])
    verse.CopyInformation(ts)
    from ctseg.drr import render_view

    view = {"angle_deg": 0, "sdd_mm": 1000, "sid_mm": 750, "size_px": [128, 32], "spacing_mm": 4.0}
    li, proj, _ = render_view(ct, view, labels=verse, device="cpu")
    assert np.all(np.isfinite(li)) and li.max() > 1.0
    present = set(np.unique(proj.multiclass)) - {0}
    assert present and present <= {18, 19}
    assert li[proj.multiclass > 0].mean() > np.percentile(li[li > 0], 60)


def test_detector_inside_volume_integrates_up_to_the_pixel():
    """Rays that end inside the volume (detector inside the box) stop at their pixel."""
    mu_val = 0.02
    vol = np.full((20, 20, 20), mu_val, np.float32)
    geom = VolumeGeometry.from_image(make_image(vol, (1.0, 1.0, 1.0)))
    # centre y = 9.5; source at y = -20.5 (outside), detector plane at y = 14.5 (inside)
    view = View.from_dict({"sdd_mm": 35, "sid_mm": 30, "size_px": 5, "spacing_mm": 1.0})
    li = raycast(vol, geom, view, device="cpu").line_integrals[0]
    from ctseg.drr.geometry import pixel_centers

    frame = view_frame(view, geom.center)
    d = pixel_centers(view, frame) - frame.source
    # from the voxel-box face y = -0.5 to the pixel (y = 14.5), along each ray
    path = 15.0 * np.linalg.norm(d, axis=-1) / d[..., 1]
    np.testing.assert_allclose(li, mu_val * path, rtol=2e-3)


def test_view_isocenter_overrides_volume_centre():
    """A view's own isocentre_mm replaces the volume centre: a bead there lands mid-detector."""
    arr = np.zeros((24, 26, 28), np.float32)
    arr[6, 20, 5] = 1.0  # z, y, x
    img = make_image(arr, (2.0, 2.0, 2.0), origin=(10.0, -20.0, 300.0))
    bead = np.array(img.TransformIndexToPhysicalPoint((5, 20, 6)))
    for angle in (0.0, 75.0):
        view = View.from_dict(
            {
                "angle_deg": angle,
                "sdd_mm": 1000,
                "sid_mm": 750,
                "size_px": 33,
                "spacing_mm": 1.0,
                "isocenter_mm": bead.tolist(),
            }
        )
        li = raycast(arr, VolumeGeometry.from_image(img), view, device="cpu").line_integrals[0]
        np.testing.assert_allclose(centroid(li), (16.0, 16.0), atol=0.3)
