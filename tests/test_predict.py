"""Inference: window blending, whole-volume equivalence, CT geometry, spine post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from ctseg.inference.package import load_package, make_plan, save_package
from ctseg.inference.postprocess import keep_largest_component, relabel_along_spine
from ctseg.inference.predict import predict_case
from ctseg.inference.sliding import gaussian_importance, sliding_window_logits, window_starts
from ctseg.models import build_model

IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def test_window_starts_cover_with_half_overlap():
    assert window_starts(10, 16, 0.5) == [0]
    assert window_starts(16, 16, 0.5) == [0]
    s = window_starts(50, 16, 0.5)
    assert s[0] == 0 and s[-1] == 34
    assert max(np.diff(s)) <= 8


def test_gaussian_importance_peak_and_symmetry():
    w = gaussian_importance((9, 8, 7))
    assert w.max() == pytest.approx(1.0) and w.min() > 0
    assert w[4, 3, 3] == w.max() and w[4, 4, 3] == w.max()  # even axis: two central voxels
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1], rtol=1e-6)


def test_single_window_equals_whole_volume_forward():
    torch.manual_seed(0)
    net = build_model({"model": "unet3d", "base_width": 4, "depth": 3}, 4).eval()
    x = np.random.default_rng(0).random((16, 12, 20)).astype(np.float32)
    got = sliding_window_logits(net, x, (16, 12, 20), 4)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)[None, None])[0].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # a window larger than the volume: zero-padded, forward, cropped back
    got_pad = sliding_window_logits(net, x[:, :10, :18], (16, 12, 20), 4)
    xp = np.zeros((16, 12, 20), np.float32)
    xp[:, :10, :18] = x[:, :10, :18]
    with torch.no_grad():
        ref_pad = net(torch.from_numpy(xp)[None, None])[0, :, :, :10, :18].numpy()
    np.testing.assert_allclose(got_pad, ref_pad, rtol=1e-5, atol=1e-5)


def test_cpu_bf16_runs_the_windows_in_bf16_on_a_bf16_cpu():
    """``cpu_bf16`` (the plan's training precision) runs the network's convolutions in bf16
    where the CPU has native bf16, and blends float32 logits close to float32's; elsewhere it
    is float32 exactly."""
    from ctseg.training.precision import cpu_has_bf16

    torch.manual_seed(4)
    net = build_model({"model": "unet3d", "base_width": 4, "depth": 2}, 3).eval()
    dtypes = []
    first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv3d))
    first_conv.register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    x = np.random.default_rng(4).random((20, 17, 12)).astype(np.float32)
    f32 = sliding_window_logits(net, x, (8, 8, 8), 3)
    assert set(dtypes) == {torch.float32}
    dtypes.clear()
    bf = sliding_window_logits(net, x, (8, 8, 8), 3, cpu_bf16=True)
    assert bf.dtype == np.float32 and bf.shape == f32.shape
    if cpu_has_bf16():
        assert set(dtypes) == {torch.bfloat16}
        assert not np.array_equal(bf, f32)
        # bf16 keeps 8 bits of mantissa: logits within a few hundredths, same arg-max nearly
        assert np.abs(bf - f32).max() < 0.1 * max(np.abs(f32).max(), 1.0)
        assert (bf.argmax(0) == f32.argmax(0)).mean() > 0.95
    else:
        assert set(dtypes) == {torch.float32}
        np.testing.assert_array_equal(bf, f32)


def test_overlapping_windows_blend_to_the_pointwise_result():
    """A pointwise (1x1x1) network gives the same logits in every window, so the Gaussian-
    weighted blend of many overlapping windows must equal one whole-volume pass."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv3d(1, 3, 1), nn.Tanh(), nn.Conv3d(3, 3, 1)).eval()
    x = np.random.default_rng(1).random((20, 17, 23)).astype(np.float32)
    got = sliding_window_logits(net, x, (8, 8, 8), 3, overlap=0.5, batch_size=3)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)[None, None])[0].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    got2d = sliding_window_logits(nn.Conv2d(1, 2, 1).eval(), x[0], (8, 8), 2)
    assert got2d.shape == (2, 17, 23)


def test_windows_are_batched_and_batches_do_not_change_logits():
    """On the CPU a 3D network never sees a batch of one (PyTorch's slow single-sample conv3d
    path): windows go in groups, a lone window beside a copy of itself; the blend is the same
    as one window per call."""
    torch.manual_seed(3)
    net = build_model({"model": "unet3d", "base_width": 4, "depth": 2}, 2).eval()
    seen = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    x = np.random.default_rng(3).random((20, 17, 8)).astype(np.float32)  # 16 windows
    ref = sliding_window_logits(net, x, (8, 8, 8), 2, batch_size=1)
    assert seen == [2] * 16  # each window beside a copy of itself
    seen.clear()
    got = sliding_window_logits(net, x, (8, 8, 8), 2, batch_size=3)
    assert seen == [3] * 5 + [2]  # the lone last window paired
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    seen.clear()
    assert sliding_window_logits(net, x, (8, 8, 8), 2).shape == (2, 20, 17, 8)
    assert seen == [4] * 4  # the default batch for a small patch
    seen.clear()
    one = sliding_window_logits(net, x[:8, :8, :8], (8, 8, 8), 2)
    assert seen == [2]
    with torch.no_grad():
        alone = net(torch.from_numpy(x[:8, :8, :8].copy())[None, None])[0].numpy()
    np.testing.assert_allclose(one, alone, rtol=1e-5, atol=1e-5)


def test_flip_tta_of_a_flip_equivariant_net_is_unchanged():
    net = nn.Conv3d(1, 2, 1).eval()
    x = np.random.default_rng(2).random((8, 8, 8)).astype(np.float32)
    a = sliding_window_logits(net, x, (8, 8, 8), 2)
    b = sliding_window_logits(net, x, (8, 8, 8), 2, tta_flip=True)
    np.testing.assert_allclose(a, b, atol=1e-6)


def spine_boxes(ids=(8, 9, 10, 11, 12), shape=(60, 12, 12)):
    lab = np.zeros(shape, np.uint8)
    for k, lid in enumerate(ids):
        lab[2 + 11 * k : 10 + 11 * k, 3:9, 3:9] = lid
    return lab


def test_relabel_fixes_a_swapped_pair_and_drops_fragments():
    truth = spine_boxes()
    # array z increases with world z (identity direction): superior is the end of the array,
    # so T1 (8) should be the last box; build the truth that way
    truth = truth[::-1].copy()
    pred = truth.copy()
    pred[truth == 10], pred[truth == 11] = 11, 10  # swap two neighbours
    pred[0:2, 0:2, 0:2] = 9  # stray fragment of 9 far from its vertebra
    out = relabel_along_spine(pred, IDENTITY, (1.0, 1.0, 1.0), valid_ids=list(range(8, 25)))
    assert np.array_equal(out, truth)


def test_relabel_respects_direction_and_keeps_a_consistent_shift():
    lab = spine_boxes()  # 8 at array z = 0
    flipped_dir = (1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0)  # array z grows towards the feet
    assert np.array_equal(relabel_along_spine(lab, flipped_dir, (1, 1, 1), list(range(8, 25))), lab)
    shifted = np.where(lab > 0, lab + 3, 0).astype(np.uint8)  # consistently 11..15: kept
    assert np.array_equal(
        relabel_along_spine(shifted, flipped_dir, (1, 1, 1), list(range(8, 25))), shifted
    )
    # with identity direction the same array is upside down (8 at the feet): only the middle
    # box agrees with any consecutive numbering, the lowest start wins, order is reversed
    out = relabel_along_spine(lab, IDENTITY, (1, 1, 1), list(range(8, 25)))
    for lid in range(8, 13):
        assert set(np.unique(out[lab == lid]).tolist()) == {20 - lid}


def test_keep_largest_component():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[1:4, 1:4, 1:4] = 5
    lab[7:9, 7:9, 7:9] = 5
    out = keep_largest_component(lab, [5])
    assert (out == 5).sum() == 27 and out[8, 8, 8] == 0


def _plan(**keys) -> dict:
    """A tiny 3D vertebra model's plan (4 mm, 8^3 patch, width 4, depth 2) with ``keys``."""
    return {
        "task": "vertebrae",
        "dim": 3,
        "spacing_mm": [4.0, 4.0, 4.0],
        "patch": [8, 8, 8],
        "hu_window": [-1000, 2000],
        "model_kwargs": {"model": "unet3d", "base_width": 4, "depth": 2, "norm": "instance"},
        **keys,
    }


@pytest.fixture()
def tiny_model_pt(tmp_path):
    torch.manual_seed(0)
    exp = {
        "task": "vertebrae",
        "model": "unet3d",
        "base_width": 4,
        "depth": 2,
        "labels": [8, 9, 10],
        "tta_flip": True,
    }
    net = build_model(exp, 4)
    # bias the head so the output has several classes
    meta = _plan(n_classes=4, class_ids=[0, 8, 9, 10])
    path = tmp_path / "model.pt"
    save_package(path, net, exp, make_plan(meta, exp))
    return path, net


def test_model_pt_loads_with_weights_only(tiny_model_pt):
    path, net = tiny_model_pt
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"state_dict", "experiment_json", "meta_json"}
    model, meta = load_package(path)
    assert meta["class_ids"] == [0, 8, 9, 10] and meta["experiment"]["labels"] == [8, 9, 10]
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), net.eval()(x))


def test_predict_output_has_exact_ct_geometry(tiny_model_pt, tmp_path):
    path, _ = tiny_model_pt
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, size=(13, 21, 17)).astype(np.int16)
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((1.3, 2.1, 3.7))
    ct.SetOrigin((-40.5, 12.25, 300.0))
    c, s = np.cos(0.3), np.sin(0.3)
    ct.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    ct_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct, str(ct_path))
    out = tmp_path / "pred" / "case.nii.gz"
    predict_case(path, {"ct": str(ct_path), "case": "x"}, out, device="cpu")
    ref = sitk.ReadImage(str(ct_path))
    pred = sitk.ReadImage(str(out))
    assert pred.GetSize() == ref.GetSize()
    np.testing.assert_allclose(pred.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(pred.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(pred.GetDirection(), ref.GetDirection(), atol=1e-5)
    assert pred.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(pred)).tolist()) <= {0, 8, 9, 10}
    assert [p.name for p in out.parent.iterdir()] == ["case.nii.gz"]


def test_levels_named_by_a_centroids_file(tiny_model_pt, tmp_path):
    """The workflow's predict names levels from the localiser's centroids JSON of the case:
    every labelled voxel takes the label of its nearest listed centroid (world LPS mm); a
    malformed file is an InputError naming it."""
    import json

    from ctseg.core.errors import InputError

    path, _ = tiny_model_pt
    hu = np.full((24, 10, 10), 400, np.int16)  # bone everywhere: the random net labels some
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((4.0, 4.0, 4.0))
    ct.SetOrigin((-20.0, -20.0, 0.0))
    ct_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct, str(ct_path))
    top, bottom = (
        {"label": 20, "x": 0.0, "y": 0.0, "z": 80.0},
        {"label": 21, "x": 0, "y": 0, "z": 8},
    )
    ctd = tmp_path / "case.centroids.json"
    ctd.write_text(json.dumps([top, bottom]))
    out = tmp_path / "pred.nii.gz"
    predict_case(path, {"ct": str(ct_path), "case": "x"}, out, device="cpu", centroids=ctd)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.unique(lab).tolist()) - {0} == {20, 21}
    z_mm = np.nonzero(lab)[0] * 4.0  # origin 0, identity direction: index z -> z mm
    named = lab[np.nonzero(lab)]
    assert (named[z_mm > 44.0] == 20).all() and (named[z_mm < 44.0] == 21).all()
    bad = tmp_path / "bad.centroids.json"
    bad.write_text('[{"label": 20}]')
    with pytest.raises(InputError, match="bad.centroids.json"):
        predict_case(path, {"ct": str(ct_path), "case": "x"}, out, device="cpu", centroids=bad)


def test_decode_logits_foreground_first():
    # voxel 0: background 0.4 vs two vertebrae 0.3 + 0.3 -> foreground, the likelier vertebra
    # voxel 1: background 0.6 -> background; voxel 2: binary task = plain arg-max
    probs = np.array([[0.4, 0.6], [0.35, 0.2], [0.25, 0.2]])
    from ctseg.inference.postprocess import decode_logits

    assert decode_logits(np.log(probs)).tolist() == [1, 0]
    two = np.log(np.array([[0.55, 0.3], [0.45, 0.7]]))
    assert decode_logits(two).tolist() == [0, 1]


def test_relabel_gives_a_connected_fragment_to_its_vertebra():
    truth = spine_boxes()[::-1].copy()
    pred = truth.copy()
    # the lower part of vertebra 10 is called 11 by the network; it touches the 10 box only
    z10 = np.flatnonzero((truth == 10).reshape(truth.shape[0], -1).any(1))
    pred[z10[0] : z10[0] + 2][truth[z10[0] : z10[0] + 2] == 10] = 11
    out = relabel_along_spine(pred, IDENTITY, (1.0, 1.0, 1.0), list(range(8, 25)))
    assert np.array_equal(out, truth)


def test_increasing_ids_skip_a_level_for_a_merged_pair():
    from ctseg.inference.postprocess import assign_increasing_ids

    # instance 1 is two vertebrae merged (votes split over ids 1 and 2); 2 and 3 say 3 and 4
    votes = np.array(
        [[100, 0, 0, 0, 0, 0], [0, 60, 60, 0, 0, 0], [0, 0, 0, 100, 0, 0], [0, 0, 0, 0, 100, 0]],
        float,
    )
    sizes = votes.sum(1)
    assert assign_increasing_ids(votes, sizes) == [0, 1, 3, 4]
    # a single swapped pair is cheaper to renumber consecutively than to skip
    swapped = np.array([[10, 0, 0, 0], [0, 0, 10, 0], [0, 10, 0, 0], [0, 0, 0, 10]], float)
    assert assign_increasing_ids(swapped, swapped.sum(1)) == [0, 1, 2, 3]


def test_labels_from_centroids_cut_between_successive_centroids():
    """Each foreground voxel takes its nearest identified centroid's level: a column of
    foreground with two centroids splits at the plane halfway between them."""
    from ctseg.inference.postprocess import labels_from_centroids

    fg = np.zeros((60, 6, 6), bool)
    fg[2:38, 1:5, 1:5] = True
    fg[55, 0, 0] = True  # a stray voxel 50 mm from the nearest centroid
    out = labels_from_centroids(
        fg, np.array([[10.0, 2.5, 2.5], [30.0, 2.5, 2.5]]), [21, 20], (2.0, 1.0, 1.0), 25.0
    )
    assert set(np.unique(out[2:20, 1:5, 1:5])) == {21}
    assert set(np.unique(out[21:38, 1:5, 1:5])) == {20}
    assert out[55, 0, 0] == 0 and not out[~fg].any()
    assert labels_from_centroids(fg, np.zeros((0, 3)), [], (1.0, 1.0, 1.0)).max() == 0


def test_labels_from_centroids_drop_pieces_that_never_reach_a_centroid():
    """A separate piece of foreground (a skull or an iliac wing called bone) within the 80 mm
    reach but never within ``component_mm`` of a centroid is dropped; a piece touching the
    column keeps its voxels, even those far from the centroids."""
    from ctseg.inference.postprocess import labels_from_centroids

    fg = np.zeros((40, 40, 40), bool)
    fg[5:25, 18:22, 18:22] = True  # the column, centroids at z 10 and 20
    fg[10:14, 22:36, 18:22] = True  # a process attached to it, reaching 17 mm out
    fg[32:38, 18:22, 30:36] = True  # a separate blob: nearest voxel ~15 mm from z=20 centroid
    pts = np.array([[10.0, 20.0, 20.0], [20.0, 20.0, 20.0]])
    # end_guard None: the blob lies past the chain's end, where a guard would take it anyway
    kw = {"end_guard": None}
    out = labels_from_centroids(fg, pts, [9, 10], (1.0, 1.0, 1.0), 80.0, 12.0, **kw)
    assert out[5:25, 18:22, 18:22].all() and out[10:14, 22:36, 18:22].all()
    assert not out[32:38, 18:22, 30:36].any()
    kept = labels_from_centroids(fg, pts, [9, 10], (1.0, 1.0, 1.0), 80.0, None, **kw)
    assert kept[32:38, 18:22, 30:36].all() and (kept[32:38, 18:22, 30:36] == 10).all()
    # the same blob, scaled by spacing: at 0.5 mm voxels it lies within 12 mm and is kept
    half = labels_from_centroids(fg, pts, [9, 10], (0.5, 0.5, 0.5), 80.0, 12.0, **kw)
    assert half[32:38, 18:22, 30:36].all()


def test_labels_from_centroids_leave_the_cut_levels_past_the_chain_ends_unnamed():
    """A column of bone with three named levels 20 mm apart (given out of order) and a cut
    neighbour at each end: with the end guards the bone past the halfway point to the next
    (unnamed) level stays background, at either end and along a tilted chain; the ghost
    lies one local step on, so the cut follows the spine's direction."""
    from ctseg.inference.postprocess import labels_from_centroids

    fg = np.zeros((100, 12, 12), bool)
    fg[:, 3:9, 3:9] = True  # bone from z 0 to 99 mm (1 mm voxels)
    pts = np.array([[50.0, 6.0, 6.0], [30.0, 6.0, 6.0], [70.0, 6.0, 6.0]])
    out = labels_from_centroids(fg, pts, [21, 20, 22], (1.0, 1.0, 1.0))
    col = out[:, 6, 6]
    # C1 first along the spine = label 20 at z 30: its ghost at z 10, L3 (22) at 70: ghost 90
    assert (col[:20] == 0).all() and (col[21:40] == 20).all()
    assert (col[41:60] == 21).all() and (col[61:80] == 22).all() and (col[81:] == 0).all()
    unguarded = labels_from_centroids(fg, pts, [21, 20, 22], (1.0, 1.0, 1.0), end_guard=None)
    assert (unguarded[:, 6, 6][:30] == 20).all() and (unguarded[:, 6, 6][75:] == 22).all()
    # a lone centroid has no direction: no guard
    one = labels_from_centroids(fg, pts[:1], [21], (1.0, 1.0, 1.0), max_distance_mm=200.0)
    assert (one[fg] == 21).all()


def test_a_foreground_model_takes_its_levels_from_the_centroids_only(tmp_path):
    """A vertebra-foreground model (classes: foreground) whose output is foreground
    everywhere: with two centroids every voxel takes the nearer one's level; without
    centroids it names nothing (no level is guessed)."""
    from ctseg.inference.predict import predict_volume_with_evidence

    exp = {"task": "vertebrae", "model": "unet3d", "base_width": 4, "depth": 2}
    net = build_model(exp, 2)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([-5.0, 5.0]))  # foreground everywhere
    meta = _plan(n_classes=2, class_ids=[0, 1], classes="foreground")
    path = tmp_path / "model.pt"
    save_package(path, net, exp, make_plan(meta, exp))
    model, plan = load_package(path)
    assert plan["class_names"] == {"1": "vertebra"}
    ct = sitk.GetImageFromArray(np.zeros((16, 8, 8), np.int16))
    ct.SetSpacing((4.0, 4.0, 4.0))  # z from 0 to 60 mm
    cents = [
        {"label": 20, "x": 14.0, "y": 14.0, "z": 10.0},
        {"label": 21, "x": 14.0, "y": 14.0, "z": 50.0},
    ]
    pred = predict_volume_with_evidence(model, plan, ct, device="cpu", centroids=cents)
    lab = sitk.GetArrayFromImage(pred.labels)
    assert set(np.unique(lab[:7])) == {20} and set(np.unique(lab[8:])) == {21}
    # its arg-max names no level, so "changed by the naming" measures nothing (was 1.0: QC's
    # 'relabelled' flag then fired on every case)
    assert pred.relabelled_fraction is None
    none = predict_volume_with_evidence(model, plan, ct, device="cpu", centroids=[]).labels
    assert sitk.GetArrayFromImage(none).max() == 0


def _two_levels_named(tmp_path, shape, spacing_mm, centre_mm, z_mm):
    """Labels of a package whose network calls every voxel foreground, on a zero CT of
    ``shape`` [z, y, x] with isotropic ``spacing_mm``, named by L1 / L2 centroids at
    ``centre_mm`` (x = y) and the two heights ``z_mm``."""
    from ctseg.inference.predict import predict_volume_with_evidence

    model, plan = _foreground_everywhere(tmp_path)
    ct = sitk.GetImageFromArray(np.zeros(shape, np.int16))
    ct.SetSpacing((spacing_mm,) * 3)
    cents = [
        {"label": lab, "x": centre_mm, "y": centre_mm, "z": z}
        for lab, z in zip((20, 21), z_mm, strict=True)
    ]
    return sitk.GetArrayFromImage(
        predict_volume_with_evidence(model, plan, ct, device="cpu", centroids=cents).labels
    )


def _foreground_everywhere(tmp_path):
    """A two-class vertebra package whose network calls every voxel foreground."""
    exp = {"task": "vertebrae", "model": "unet3d", "base_width": 4, "depth": 2}
    net = build_model(exp, 2)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([-5.0, 5.0]))
    path = tmp_path / "model.pt"
    save_package(path, net, exp, make_plan(_plan(n_classes=2, class_ids=[0, 1]), exp))
    return load_package(path)


def test_what_the_centroid_naming_removes_stays_removed_on_a_finer_ct_grid(tmp_path):
    """The CT-grid decision (interpolated foreground probability, named by the nearest kept
    working-grid id) must not bring back what the naming dropped: a foreground-everywhere
    model on a 2 mm CT 200 mm long, two centroids near its top -> nothing labelled past the
    lower guard (70 mm), on the 2 mm grid as on the 4 mm working grid. Before, every voxel
    of the CT came back as the last level (the probability was 1 everywhere)."""
    lab = _two_levels_named(tmp_path, (100, 14, 14), 2.0, 13.0, (10.0, 50.0))  # z 0-198 mm
    z, core = np.arange(100) * 2.0, lab[:, 2:-2, 2:-2]  # away from the image's x/y rim
    assert (core[z < 28] == 20).all() and (core[(z > 32) & (z < 68)] == 21).all()
    assert not lab[z > 74].any()


def test_centroid_naming_cuts_between_levels_at_the_ct_s_own_resolution(tmp_path):
    """Levels named by centroids on a 1 mm CT segmented on a 4 mm grid: the boundary is the
    plane halfway between the centroids (28.6 mm) to the CT's millimetre, not the working
    grid's 4 mm staircase carried over nearest-neighbour (which gave z = 29 mm to the upper
    level)."""
    lab = _two_levels_named(tmp_path, (70, 12, 12), 1.0, 5.5, (10.0, 47.2))  # z 0-69 mm
    z, core = np.arange(70), lab[:, 3:-3, 3:-3]
    assert (core[(z >= 12) & (z <= 28)] == 20).all()
    assert (core[(z >= 29) & (z <= 45)] == 21).all()


@pytest.mark.parametrize(
    "shape, spacing, new",
    [
        ((60, 50, 40), (0.8, 0.8, 0.8), (4.0, 4.0, 4.0)),  # exact ratio 5
        ((29, 41, 37), (0.7, 0.9, 2.5), (4.0, 4.0, 4.0)),  # non-integer ratios, coarse z
        ((35, 33, 30), (5.0, 1.0, 0.6), (4.0, 4.0, 8.0)),  # one axis finer: no blur there
        ((12, 10, 9), (2.0, 2.0, 2.0), (1.5, 1.5, 1.5)),  # upsampling: interpolation only
    ],
)
def test_working_image_matches_resample_to_spacing(shape, spacing, new):
    """The separable working-grid sampler gives resample_to_spacing's grid and values (ITK's
    discrete Gaussian, replicated edges, clamped linear interpolation, default outside)."""
    from ctseg.core.resample import resample_to_spacing
    from ctseg.inference.downsample import working_image

    img = sitk.GetImageFromArray(np.random.default_rng(4).normal(0, 300, shape).astype(np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin((3.0, -7.0, 11.0))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    ref = resample_to_spacing(img, new, is_label=False, default=-1000.0)
    got = working_image(img, new, default=-1000.0)
    assert got.GetSize() == ref.GetSize()
    np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin())
    np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing())
    assert got.GetDirection() == ref.GetDirection()
    a, b = sitk.GetArrayFromImage(ref), sitk.GetArrayFromImage(got)
    np.testing.assert_allclose(b, a, atol=2e-4 * np.abs(a).max())


def test_a_size_adaptive_grid_follows_the_body_its_centroids_measure(monkeypatch):
    """``predict_size_adaptive``: the plan's spacing is for a natural-size spine and scales with
    the case's size read from its centroids (T12-L2 at 0.8 x the natural steps: 3.6 mm ->
    2.88 mm), clipped to the population's range (2.0 x: 1.3 x 3.6 mm); without centroids,
    or not adaptive, the plan's spacing. A 64 mm CT then segments on 22 working slices."""
    import ctseg.inference.predict as pred_mod
    from ctseg.core.anatomy import natural_step_mm
    from ctseg.inference.predict import inference_spacing, predict_volume_with_evidence

    def chain(scale):
        z, out = 60.0, []
        for a, b in ((19, 20), (20, 21), (21, None)):
            out.append({"label": a, "x": 14.0, "y": 14.0, "z": z})
            z -= scale * natural_step_mm(a, b) if b else 0.0
        return out

    plan = {"spacing_mm": [4.0] * 3, "predict_spacing_mm": [3.6] * 3, "predict_size_adaptive": True}
    np.testing.assert_allclose(inference_spacing(plan, chain(0.8)), [2.88] * 3)
    np.testing.assert_allclose(inference_spacing(plan, chain(2.0)), [3.6 * 1.3] * 3)
    np.testing.assert_allclose(inference_spacing(plan, chain(0.5)), [3.6 * 0.75] * 3)
    assert (
        inference_spacing(plan) == [3.6] * 3
        and inference_spacing(plan, chain(0.8)[:1]) == [3.6] * 3
    )
    assert inference_spacing({**plan, "predict_size_adaptive": False}, chain(0.8)) == [3.6] * 3

    seen = []

    def fake_logits(model, meta, image, *, device, tta):
        seen.append(image.shape)
        out = np.zeros((2, *image.shape), np.float32)
        out[1] = 5.0
        return out

    monkeypatch.setattr(pred_mod, "working_grid_logits", fake_logits)
    ct = sitk.GetImageFromArray(np.zeros((16, 8, 8), np.int16))
    ct.SetSpacing((4.0, 4.0, 4.0))
    exp = {"task": "vertebrae", "model": "unet3d", "predict_spacing_mm": [3.6] * 3}
    exp["predict_size_adaptive"] = True
    meta = make_plan(_plan(n_classes=2, class_ids=[0, 1], classes="foreground"), exp)
    meta["experiment"] = exp
    out = predict_volume_with_evidence(None, meta, ct, device="cpu", centroids=chain(0.8))
    assert seen[-1][0] == 22  # 64 mm over 2.88 mm, rounded up
    assert out.labels.GetSize() == ct.GetSize()


def test_predict_spacing_sets_the_grid_a_volume_model_segments_on(tmp_path, monkeypatch):
    """An experiment's ``predict_spacing_mm`` goes into the plan and prediction segments on
    that grid (a 64 mm CT at 4 mm: 16 working voxels along z at the training spacing, 32 at
    2 mm); the labels still land on the CT's own grid. Invalid values fail by key."""
    import ctseg.inference.predict as pred_mod
    from ctseg.core.config import ExperimentConfig
    from ctseg.core.errors import ConfigError
    from ctseg.inference.predict import inference_spacing, predict_volume_with_evidence

    exp = {"task": "vertebrae", "model": "unet3d", "base_width": 4, "depth": 2}
    net = build_model(exp, 2)
    seen = []

    def fake_logits(model, meta, image, *, device, tta):
        seen.append(image.shape)
        out = np.zeros((2, *image.shape), np.float32)
        out[1] = 5.0  # foreground everywhere
        return out

    monkeypatch.setattr(pred_mod, "working_grid_logits", fake_logits)
    ct = sitk.GetImageFromArray(np.zeros((16, 8, 8), np.int16))
    ct.SetSpacing((4.0, 4.0, 4.0))
    cents = [
        {"label": 20, "x": 14.0, "y": 14.0, "z": 10.0},
        {"label": 21, "x": 14, "y": 14, "z": 50},
    ]
    for spacing, z_voxels in ((None, 16), ([2.0, 2.0, 2.0], 32)):
        e = {**exp, "predict_spacing_mm": spacing} if spacing else exp
        plan = make_plan(_plan(n_classes=2, class_ids=[0, 1], classes="foreground"), e)
        assert inference_spacing(plan) == (spacing or [4.0, 4.0, 4.0])
        path = tmp_path / f"model{z_voxels}.pt"
        save_package(path, net, e, plan)
        model, loaded = load_package(path)
        out = predict_volume_with_evidence(model, loaded, ct, device="cpu", centroids=cents)
        assert seen[-1][0] == z_voxels
        assert out.labels.GetSize() == ct.GetSize() and out.labels.GetSpacing() == ct.GetSpacing()
        assert sitk.GetArrayFromImage(out.labels)[2:5, 2:-2, 2:-2].min() == 20
    with pytest.raises(ConfigError, match="predict_spacing_mm"):
        ExperimentConfig.from_dict({**exp, "predict_spacing_mm": [3.6, 0.0, 3.6]}, "v")
    keyed = ExperimentConfig.from_dict({**exp, "predict_spacing_mm": [3.6, 3.6, 3.6]}, "v")
    assert "predict_spacing_mm" not in keyed.training_identity()  # no retraining for it
    keyed = ExperimentConfig.from_dict({**exp, "predict_size_adaptive": True}, "v")
    assert keyed.predict_size_adaptive and "predict_size_adaptive" not in keyed.training_identity()


def test_a_neck_view_segments_on_a_finer_grid():
    """``predict_cervical_factor``: three or more cervical centroids (C1-C7) multiply the grid
    by the factor, on top of the size-adaptive scale; two cervical levels, a thoracic view, no
    centroids or no factor leave it alone. Invalid factors fail by key; the key does not
    change what training computes."""
    from ctseg.core.anatomy import natural_step_mm
    from ctseg.core.config import ExperimentConfig
    from ctseg.core.errors import ConfigError
    from ctseg.inference.predict import inference_spacing

    def chain(labels, scale=1.0):
        z, out = 0.0, []
        for a, b in zip(labels, [*labels[1:], None], strict=True):
            out.append({"label": a, "x": 0.0, "y": 0.0, "z": z})
            z -= scale * natural_step_mm(a, b) if b else 0.0
        return out

    plan = {
        "spacing_mm": [4.0] * 3,
        "predict_spacing_mm": [3.2] * 3,
        "predict_cervical_factor": 0.8,
    }
    np.testing.assert_allclose(inference_spacing(plan, chain([3, 4, 5, 6])), [2.56] * 3)
    np.testing.assert_allclose(inference_spacing(plan, chain([6, 7, 8, 9])), [3.2] * 3)
    np.testing.assert_allclose(inference_spacing(plan, chain([5, 6, 7, 8])), [2.56] * 3)
    assert inference_spacing(plan) == [3.2] * 3
    adaptive = {**plan, "predict_size_adaptive": True}
    np.testing.assert_allclose(inference_spacing(adaptive, chain([1, 2, 3, 4], 1.2)), [3.072] * 3)
    np.testing.assert_allclose(inference_spacing(adaptive, chain([9, 10, 11], 1.2)), [3.84] * 3)
    no_factor = {k: v for k, v in plan.items() if k != "predict_cervical_factor"}
    assert inference_spacing(no_factor, chain([1, 2, 3, 4])) == [3.2] * 3

    exp = {"task": "vertebrae", "model": "unet3d"}
    for bad in (0.0, -0.5, 2.5):
        with pytest.raises(ConfigError, match="predict_cervical_factor"):
            ExperimentConfig.from_dict({**exp, "predict_cervical_factor": bad}, "v")
    keyed = ExperimentConfig.from_dict({**exp, "predict_cervical_factor": 0.8}, "v")
    assert "predict_cervical_factor" not in keyed.training_identity()
    assert (
        make_plan(_plan(n_classes=2, class_ids=[0, 1]), keyed.to_dict())["predict_cervical_factor"]
        == 0.8
    )


def test_metal_is_filled_before_a_vertebra_model_sees_the_ct(tmp_path, monkeypatch):
    """``predict_metal_fill_hu`` in the plan: the working-grid image the network sees is that of
    the CT with its metal replaced (a screw of 7000 HU reads as 250 HU), while the labels still
    land on the source grid; without the key the CT goes in as it is. The key is a prediction
    setting: it does not change what training computes."""
    import ctseg.inference.predict as pred_mod
    from ctseg.core.config import ExperimentConfig
    from ctseg.core.errors import ConfigError
    from ctseg.inference.predict import predict_volume_with_evidence

    seen = []

    def fake_logits(model, meta, image, *, device, tta):
        seen.append(image.max())
        return np.zeros((2, *image.shape), np.float32)

    monkeypatch.setattr(pred_mod, "working_grid_logits", fake_logits)
    hu = np.full((16, 12, 12), 40, np.int16)
    hu[6:10, 4:8, 4:8] = 7000  # a block of metal, larger than a working voxel
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((4.0, 4.0, 4.0))
    exp = {"task": "vertebrae", "model": "unet3d", "base_width": 4, "depth": 2}
    net = build_model(exp, 2)
    for fill in (None, 250.0):
        e = {**exp, "predict_metal_fill_hu": fill}
        plan = make_plan(_plan(n_classes=2, class_ids=[0, 1]), e)
        assert ("predict_metal_fill_hu" in plan) == (fill is not None)
        save_package(tmp_path / "m.pt", net, e, plan)
        model, loaded = load_package(tmp_path / "m.pt")
        out = predict_volume_with_evidence(model, loaded, ct, device="cpu")
        assert out.labels.GetSize() == ct.GetSize()
    window = (np.array([250.0, 2000.0]) + 1000.0) / 3000.0  # hu_window [-1000, 2000] -> [0, 1]
    assert seen[0] == pytest.approx(1.0)  # clipped metal at the window's top
    assert seen[1] == pytest.approx(window[0], abs=1e-3)  # cancellous bone's value
    keyed = ExperimentConfig.from_dict({**exp, "predict_metal_fill_hu": 250}, "v")
    assert "predict_metal_fill_hu" not in keyed.training_identity()  # no retraining for it
    for bad in (3000, -2000):
        with pytest.raises(ConfigError, match="predict_metal_fill_hu"):
            ExperimentConfig.from_dict({**exp, "predict_metal_fill_hu": bad}, "v")
    with pytest.raises(ConfigError, match="predict_metal_fill_hu"):
        ExperimentConfig.from_dict(
            {"task": "metal", "model": "unet2d", "predict_metal_fill_hu": 250}, "m"
        )
