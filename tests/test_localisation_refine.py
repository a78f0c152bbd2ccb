"""The localiser's fine second stage (ctseg.localisation.refine) and sub-networks in packages."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ctseg.core.errors import ConfigError, InputError
from ctseg.core.resample import antialias, resample_to_spacing
from ctseg.localisation.heatmaps import refine_peak
from ctseg.localisation.refine import (
    _merge,
    _probes,
    column_probes,
    crop_patch,
    patch_target,
    resolve_refiner,
)


def test_crop_patch_pads_with_air_outside_the_array():
    arr = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    p = crop_patch(arr, (-2, 3, 4), 4)
    assert p.shape == (4, 4, 4)
    assert np.all(p[:2] == 0)  # z = -2, -1: outside
    assert np.all(p[:, 3:] == 0)  # y = 6: outside
    assert np.all(p[:, :, 3:] == 0)  # x = 7: outside
    np.testing.assert_array_equal(p[2:, :3, :3], arr[0:2, 3:6, 4:7])
    assert not crop_patch(arr, (10, 10, 10), 4).any()


def test_patch_target_puts_each_centroid_in_its_level_channel_at_its_sub_voxel_position():
    sp = (3.0, 3.0, 3.0)
    pts = np.array([[12.3, 15.6, 9.2], [40.0, 40.0, 40.0], [20.5, 14.0, 16.7]])
    start = (2, 3, 1)
    t = patch_target(pts, [4, 0, 1], 6, start, 32, sp, 4.0)
    assert t.shape == (6, 32, 32, 32)
    assert not t[0].any()  # the second point lies far outside the patch
    for ch, p in ((4, pts[0]), (1, pts[2])):
        peak = np.unravel_index(int(np.argmax(t[ch])), t[ch].shape)
        np.testing.assert_allclose(refine_peak(t[ch], peak), p - np.array(start), atol=1e-6)
    one = patch_target(pts, [0, 0, 0], 1, start, 32, sp, 4.0)
    np.testing.assert_allclose(one[0], np.maximum(t[4], t[1]), atol=1e-7)


def test_probes_fill_a_gap_and_extend_both_ends_of_the_chain():
    zs = [0.0, -30.0, -60.0, -120.0, -150.0]  # one vertebra (z = -90) missing
    pts = [{"world": [0.0, 0.0, z], "score": 1.0} for z in zs]
    probes = sorted(p[2] for p in _probes(pts))
    np.testing.assert_allclose(probes, [-180.0, -90.0, 30.0])


def test_probes_follow_the_column_not_points_off_it():
    """L1, L2 found (45 mm apart) and the two femoral heads 70 mm to either side 110 mm lower
    (body_small draw 7901): with the heads in the chain, the gap from L2 down to a head is 1.4
    steps and no probe looks one step below L2, where L3 is; on the column alone the end probe
    does."""
    spine = [
        {"world": [5.0, 2.0, -348.0], "score": 0.9},
        {"world": [3.0, 1.0, -393.0], "score": 0.9},
    ]
    heads = [
        {"world": [70.0, -4.0, -504.0], "score": 0.5},
        {"world": [-71.0, -3.0, -506.0], "score": 0.5},
    ]
    l3 = np.array([1.0, 0.0, -438.0])  # one step below L2
    at_l3 = lambda probes: [p for p in probes if np.linalg.norm(np.subtract(p, l3)) < 15.0]  # noqa: E731
    assert at_l3(_probes(spine + heads)) == []
    probes = column_probes(spine + heads)
    np.testing.assert_allclose(at_l3(probes), [l3])
    assert len(probes) == 2  # one beyond each end of L1-L2
    assert column_probes([spine[0]]) == []


def test_midpoint_probes_look_between_every_pair_of_neighbours():
    """Every other vertebra found (L2, L4 of a small body, 45 mm apart, the true step 23 mm):
    the plain probes see no gap and go 45 mm beyond each end; with midpoints one probe also
    lands halfway, where L3 is. A gap long enough for its own probes gets no extra midpoint."""
    pts = [{"world": [0.0, 0.0, z], "score": 1.0} for z in (-348.0, -393.0)]
    assert sorted(p[2] for p in _probes(pts)) == [-438.0, -303.0]
    assert sorted(p[2] for p in column_probes(pts, midpoints=True)) == [-438.0, -370.5, -303.0]
    zs = [0.0, -30.0, -60.0, -120.0, -150.0]  # one vertebra (z = -90) missing
    pts = [{"world": [0.0, 0.0, z], "score": 1.0} for z in zs]
    mids = sorted(p[2] for p in _probes(pts, ends=False, midpoints=True))
    np.testing.assert_allclose(mids, [-135.0, -90.0, -45.0, -15.0])


def test_merge_keeps_the_stronger_of_two_points_closer_than_merge_mm():
    pts = [
        {"world": [0.0, 0.0, 0.0], "score": 0.5},
        {"world": [0.0, 3.0, 4.0], "score": 0.9},  # 5 mm away
        {"world": [0.0, 0.0, 30.0], "score": 0.2},
    ]
    kept = _merge(pts, 8.0)
    assert [p["score"] for p in kept] == [0.9, 0.2]


def test_refiner_config_is_checked():
    assert resolve_refiner(False) is None
    assert resolve_refiner(True)["patch"] == 32
    with pytest.raises(ConfigError, match="unknown refiner key"):
        resolve_refiner({"stepz": 3})
    with pytest.raises(ConfigError, match="refiner.patch"):
        resolve_refiner({"patch": 20})
    with pytest.raises(ConfigError, match="refiner.spacing_mm"):
        resolve_refiner({"spacing_mm": [3.0, 0.0, 3.0]})


def test_antialias_smooths_only_the_axes_that_get_coarser():
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.normal(0, 100, (40, 40, 40)).astype(np.float32))
    img.SetSpacing((1.0, 1.0, 4.0))
    out = sitk.GetArrayFromImage(antialias(img, [4.0, 4.0, 4.0]))
    # x, y: sigma 1.5 mm; white noise std falls by 1 / (2 sqrt(pi) 1.5) per axis: ~19 HU
    assert 15.0 < out.std() < 25.0
    # neighbours along x are now correlated, along z (already 4 mm, not smoothed) they are not
    corr_x = np.corrcoef(out[..., :-1].ravel(), out[..., 1:].ravel())[0, 1]
    corr_z = np.corrcoef(out[:-1].ravel(), out[1:].ravel())[0, 1]
    assert corr_x > 0.7 and abs(corr_z) < 0.1
    assert antialias(img, [1.0, 1.0, 4.0]) is img
    # a 1 mm noise volume brought to 8 mm keeps a fraction of its noise, not all of it
    fine = sitk.GetImageFromArray(rng.normal(0, 100, (64, 64, 64)).astype(np.float32))
    coarse = sitk.GetArrayFromImage(resample_to_spacing(fine, [8.0] * 3, is_label=False))
    assert coarse.std() < 10.0
    # a constant image stays constant (the kernel is normalised), labels are never smoothed
    const = sitk.GetImageFromArray(np.full((20, 20, 20), 300, np.int16))
    assert np.all(
        sitk.GetArrayFromImage(resample_to_spacing(const, [4.0] * 3, is_label=False)) == 300
    )
    lab = sitk.GetImageFromArray((rng.random((20, 20, 20)) > 0.5).astype(np.uint8))
    out = sitk.GetArrayFromImage(resample_to_spacing(lab, [2.0] * 3, is_label=True))
    assert set(np.unique(out)) <= {0, 1}


def test_a_package_carries_its_sub_networks(tmp_path):
    import torch

    from ctseg.inference.package import load_package, make_plan, save_package
    from ctseg.models import build_model, model_kwargs

    main_cfg = {"model": "unet3d", "base_width": 4, "depth": 2}
    sub_cfg = {"model": "unet3d", "base_width": 4, "depth": 3}
    torch.manual_seed(0)
    main, sub = build_model(main_cfg, 3), build_model(sub_cfg, 2)
    meta = {
        "task": "centroids", "dim": 3, "n_classes": 3, "class_ids": [0, 8, 9],
        "spacing_mm": [8.0] * 3, "patch": [], "hu_window": [-1000, 2000],
        "model_kwargs": model_kwargs(main_cfg),
        "subnets": {"refiner": {"model_kwargs": model_kwargs(sub_cfg), "n_classes": 2}},
    }  # fmt: skip
    path = tmp_path / "model.pt"
    save_package(path, main, main_cfg, make_plan(meta, main_cfg), {"refiner": sub})
    model, plan = load_package(path)
    loaded = plan["subnet_modules"]["refiner"]
    for k, v in sub.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    for k, v in main.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # a plan whose sub-network does not match its weights is refused, naming the file
    bad = {**meta, "subnets": {"refiner": {"model_kwargs": model_kwargs(main_cfg), "n_classes": 2}}}
    save_package(path, main, main_cfg, make_plan(bad, main_cfg), {"refiner": sub})
    with pytest.raises(InputError, match="model.pt"):
        load_package(path)
    with pytest.raises(ValueError, match="subnets"):
        save_package(path, main, main_cfg, make_plan({**meta, "subnets": {}}, main_cfg), {"x": sub})


def test_the_refiner_brings_a_tiny_overfit_to_the_centroids(tmp_path):
    """One phantom at 8 mm, T8-L3: the first stage alone places its points on the 8 mm grid;
    with a refiner trained on 3 mm patches of the same case, every level is identified and
    the mean error falls below 2.5 mm."""
    import torch

    from ctseg import phantom
    from ctseg.localisation import (
        identification_scores,
        identification_table,
        predict_centroids,
        train_localiser,
    )

    ph = phantom.generate(3, {"shape": [32, 24, 40], "spacing_mm": [8.0, 8.0, 8.0],
                              "first_level": "T8", "last_level": "L3"})  # fmt: skip
    item = {"case": "tiny", "ct": ph.image("hu"), "centroids": ph.centroids}
    cfg = {
        "levels": "T8-L3", "epochs": 3, "steps_per_epoch": 20, "crop_prob": 0.0,
        "rotate_prob": 0.0, "lr": 3e-3,
        "refiner": {"steps": 150, "batch_size": 4, "patch": 16, "spacing_mm": [4.0] * 3,
                    "sigma_mm": 5.0, "background_prob": 0.1, "identify": False},
    }  # fmt: skip
    threads = torch.get_num_threads()
    try:
        model = train_localiser([item], [], tmp_path, cfg, seed=1, device="cpu", threads=1)
    finally:
        torch.set_num_threads(threads)
    pred = predict_centroids(model, item["ct"], device="cpu")
    s = identification_scores(identification_table(pred, item["centroids"]))
    assert s["id_rate"] == 1.0 and s["false_positives"] == 0
    assert s["mean_error_mm"] < 2.5
    assert (tmp_path / "checkpoints" / "refiner.pt").is_file()


def test_the_refiner_and_region_network_train_alike_in_channels_last(tmp_path):
    """The localiser's patch networks with ``channels_last``: conv weights in the NDHWC
    layout, and the same float32 losses step by step as in NCDHW."""
    import torch

    from ctseg import phantom
    from ctseg.localisation.refine import RefinerTrainer
    from ctseg.localisation.regions import RegionTrainer
    from ctseg.localisation.training import resolve_config

    ph = phantom.generate(3, {"shape": [32, 24, 40], "spacing_mm": [8.0, 8.0, 8.0],
                              "first_level": "T8", "last_level": "L3"})  # fmt: skip
    item = {"case": "tiny", "ct": ph.image("hu"), "centroids": ph.centroids}
    cfg = resolve_config({
        "levels": "T8-L3", "channels_last": True,
        "refiner": {"batch_size": 2, "patch": 16, "spacing_mm": [4.0] * 3},
        "regions": {"batch_size": 2, "patch": 16, "spacing_mm": [6.0] * 3},
    })  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for cls, sub in ((RefinerTrainer, cfg["refiner"]), (RegionTrainer, cfg["regions"])):
            losses = {}
            for cl in (False, True):
                tr = cls([item], sub, tmp_path / f"{cls.__name__}{cl}", 1, torch.device("cpu"),
                         None, cl)  # fmt: skip
                # (weights with one input channel or a 1^3 kernel are both layouts at once)
                convs = [p for p in tr.model.parameters() if p.ndim == 5 and min(p.shape[1:]) > 1]
                assert convs and all(
                    p.is_contiguous(memory_format=torch.channels_last_3d) == cl for p in convs
                )
                losses[cl] = [tr.train_step(*tr.sample()) for _ in range(3)]
            np.testing.assert_allclose(losses[True], losses[False], rtol=2e-3)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ConfigError, match="channels_last"):
        resolve_config({"channels_last": "yes"})


def test_a_candidate_moves_to_its_own_peak_not_the_neighbours_stronger_one():
    """Two vertebrae 16 mm apart on a 2 mm patch: the candidate sits 3 mm from the weaker
    peak. The strongest peak in reach (20 mm) is the neighbour's; weighted by distance
    (near_mm 10) the candidate keeps its own."""
    from ctseg.localisation.heatmaps import gaussian_heatmaps
    from ctseg.localisation.refine import _peak_near

    sp = np.array([2.0, 2.0, 2.0])
    own, other = np.array([16.0, 16.0, 16.0]), np.array([24.0, 16.0, 16.0])
    maps = gaussian_heatmaps(np.stack([own, other]), (32, 32, 32), sp, 3.0)
    heat = np.maximum(0.6 * maps[0], 0.9 * maps[1])
    centre = own + np.array([1.5, 0.0, 0.0])
    zyx, value = _peak_near(heat, centre, sp, 20.0, 0.3, 10.0)
    np.testing.assert_allclose(zyx, own, atol=0.05)
    assert value == pytest.approx(0.6, abs=0.01)
    zyx, value = _peak_near(heat, centre, sp, 20.0, 0.3, None)
    np.testing.assert_allclose(zyx, other, atol=0.05)
    assert _peak_near(heat, centre, sp, 20.0, 0.95, 10.0) is None
