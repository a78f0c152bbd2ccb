"""Centroid-only localisation (issue 14): heatmaps, decoding, consistency, identification."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from ctseg.core.errors import ConfigError, InputError
from ctseg.localisation.decode import (
    SPINE_ORDER,
    _score,
    assign_levels,
    increasing_ids_with_skips,
    resolve_levels,
)
from ctseg.localisation.geometry import (
    index_to_world,
    inside,
    read_centroids,
    to_working,
    world_to_index,
)
from ctseg.localisation.heatmaps import (
    channel_peaks,
    detect_points,
    gaussian_heatmaps,
    refine_peak,
)
from ctseg.localisation.identify import identification_scores, identification_table
from ctseg.localisation.predict import decode_centroids, on_the_column
from ctseg.localisation.training import resolve_config, weighted_bce
from ctseg.training.precision import cpu_has_bf16

SP = (4.0, 4.0, 4.0)
# hand-placed centroids, continuous (z, y, x) index; the first and last lie on the first and
# last z plane (edge of the field of view), the third on the last x plane
POINTS = np.array(
    [
        [0.0, 8.3, 9.1],
        [6.4, 7.6, 8.8],
        [12.7, 8.0, 17.0],
        [19.0, 8.4, 9.2],
    ]
)
SHAPE = (20, 16, 18)


def _work_image(shape_zyx=SHAPE, spacing=SP, origin=(-30.0, -20.0, -40.0)) -> sitk.Image:
    img = sitk.Image([shape_zyx[2], shape_zyx[1], shape_zyx[0]], sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


# ------------------------------------------------------------------------------ heatmaps


def test_heatmap_values_match_the_formula():
    h = gaussian_heatmaps(POINTS[1:2], SHAPE, SP, sigma_mm=6.0)
    assert h.shape == (1, *SHAPE) and h.dtype == np.float32
    z, y, x = 5, 9, 7
    d2 = ((z - 6.4) ** 2 + (y - 7.6) ** 2 + (x - 8.8) ** 2) * 16.0
    assert h[0, z, y, x] == pytest.approx(math.exp(-d2 / 72.0), rel=1e-6)
    # an absent level (NaN row) has an all-zero map
    assert not gaussian_heatmaps([[np.nan] * 3], SHAPE, SP, 6.0).any()


@pytest.mark.parametrize("sigma_mm", [4.0, 6.0, 9.0])
def test_heatmaps_round_trip_exactly_per_channel(sigma_mm):
    h = gaussian_heatmaps(POINTS, SHAPE, SP, sigma_mm)
    peaks = channel_peaks(h, threshold=0.3)
    for (zyx, val), p in zip(peaks, POINTS, strict=True):
        np.testing.assert_allclose(zyx, p, atol=1e-5)
        assert val > 0.3


def test_refine_is_exact_for_a_centre_just_outside_the_grid():
    h = gaussian_heatmaps([[-0.4, 5.2, 6.6]], (10, 10, 10), SP, 6.0)[0]
    np.testing.assert_allclose(refine_peak(h, (0, 5, 7)), [-0.4, 5.2, 6.6], atol=1e-5)


def test_weighted_mean_refinement_is_biased_at_the_edge():
    """Why the log-parabola is the default: the cut window of a weighted mean pulls an edge
    centroid inwards, while the interior result is close."""
    h = gaussian_heatmaps(POINTS, SHAPE, SP, 6.0)
    edge = refine_peak(h[0], (0, 8, 9), method="mean")
    assert edge[0] > 0.3  # true z index 0.0
    inner = refine_peak(h[1], (6, 8, 9), method="mean", radius=4)
    np.testing.assert_allclose(inner, POINTS[1], atol=0.15)


def test_decoding_round_trips_points_and_levels_in_world_coordinates():
    """Targets of hand-placed centroids decode to exactly those centroids and levels."""
    work = _work_image()
    levels = [8, 9, 10, 11]  # T1-T4; T1 is the most superior = highest z index
    pts = POINTS[::-1].copy()  # T1 at z 19.0 (top edge), T4 at z 0.0 (bottom edge)
    heat = gaussian_heatmaps(pts, SHAPE, SP, 6.0)
    meta = {"levels": levels, "threshold": 0.3, "min_distance_mm": 12.0}
    out = decode_centroids(heat, work, meta)
    assert [c["label"] for c in out] == levels
    assert [c["name"] for c in out] == ["T1", "T2", "T3", "T4"]
    for c, p in zip(out, pts, strict=True):
        np.testing.assert_allclose(c["world"], index_to_world(work, p), atol=1e-4)
        assert c["world"] == [c["x"], c["y"], c["z"]]


def test_detection_finds_a_vertebra_whose_channel_fired_elsewhere():
    """Channel T3 peaks on T2's vertebra: detection still finds all four vertebrae and the
    consistency step numbers them T1-T4."""
    work = _work_image()
    pts = POINTS[::-1].copy()
    heat = gaussian_heatmaps(pts, SHAPE, SP, 6.0)
    heat[2] = 0.9 * gaussian_heatmaps(pts[1:2], SHAPE, SP, 6.0)[0]
    heat[1] *= 0.8
    heat[2] = np.maximum(heat[2], 0.5 * gaussian_heatmaps(pts[2:3], SHAPE, SP, 6.0)[0])
    found = detect_points(heat, SP, 0.3, 12.0)
    assert len(found) == 4
    out = decode_centroids(heat, work, {"levels": [8, 9, 10, 11]})
    assert [c["label"] for c in out] == [8, 9, 10, 11]
    np.testing.assert_allclose(out[2]["world"], index_to_world(work, pts[2]), atol=1e-4)


def test_nothing_above_threshold_decodes_to_no_points():
    heat = np.full((3, *SHAPE), 0.1, dtype=np.float32)
    assert decode_centroids(heat, _work_image(), {"levels": [8, 9, 10]}) == []


# ------------------------------------------------------------------------------ consistency


def test_resolve_levels_orders_transitional_levels_anatomically():
    assert resolve_levels("T1-L5") == list(range(8, 25))
    assert resolve_levels(["L6", "L1", "T13", "T12"]) == [19, 28, 20, 25]
    assert SPINE_ORDER.index(28) == SPINE_ORDER.index(19) + 1
    with pytest.raises(ValueError):
        resolve_levels(["T1", "X9"])


def test_assign_levels_corrects_a_swapped_pair_by_its_neighbours():
    levels = [8, 9, 10, 11, 12]
    votes = np.eye(5) * 0.9
    votes[1], votes[2] = [0, 0.1, 0.8, 0, 0], [0, 0.8, 0.1, 0, 0]  # T2 and T3 swapped
    assert assign_levels(votes, levels) == [8, 9, 10, 11, 12]


def test_assign_levels_keeps_a_consistent_shift():
    levels = [8, 9, 10, 11, 12]
    votes = np.zeros((3, 5))
    votes[0, 2] = votes[1, 3] = votes[2, 4] = 0.9  # a partial view: T3-T5
    assert assign_levels(votes, levels) == [10, 11, 12]


def test_t13_is_a_hypothesis_not_a_gap():
    levels = resolve_levels(["T11", "T12", "T13", "L1", "L2"])  # [18, 19, 28, 20, 21]
    normal = np.zeros((4, 5))
    for k, c in enumerate([0, 1, 3, 4]):
        normal[k, c] = 0.8
    assert assign_levels(normal, levels) == [18, 19, 20, 21]
    with_t13 = np.zeros((5, 5))
    np.fill_diagonal(with_t13, 0.8)
    assert assign_levels(with_t13, levels) == [18, 19, 28, 20, 21]


def test_optional_cost_is_a_prior_against_transitional_levels():
    levels = resolve_levels(["T12", "T13", "L1", "L2"])  # [19, 28, 20, 21]
    votes = np.array(
        [
            [0.9, 0.0, 0.0, 0.0],  # T12
            [0.0, 0.5, 0.45, 0.0],  # T13 0.5 or L1 0.45
            [0.0, 0.0, 0.5, 0.45],  # L1 0.5 or L2 0.45
        ]
    )
    # free hypotheses: T12 T13 L1 scores 1.9 + 2 bonuses against 1.8 + 2 for T12 L1 L2
    assert assign_levels(votes, levels) == [19, 28, 20]
    # a cost of 0.5 per transitional level used: 1.4 + 0.5 < 1.8 + 0.5
    assert assign_levels(votes, levels, optional_cost=0.5) == [19, 20, 21]
    # strong evidence still wins over the prior
    strong = votes.copy()
    strong[1] = [0.0, 0.95, 0.05, 0.0]
    strong[2] = [0.0, 0.0, 0.95, 0.05]
    assert assign_levels(strong, levels, optional_cost=0.5) == [19, 28, 20]


def test_more_points_than_levels_drops_the_weakest():
    votes = np.array([[0.9, 0.0], [0.05, 0.04], [0.0, 0.9]])
    assert assign_levels(votes, [8, 9]) == [8, None, 9]
    assert assign_levels(votes, [8, 9], allow_skips=False) == [8, None, 9]


def test_a_ghost_detection_between_two_vertebrae_is_skipped_not_shifting_the_rest():
    levels = [8, 9, 10, 11, 12]
    votes = np.zeros((6, 5))
    for k, c in enumerate([0, 1, None, 2, 3, 4]):
        if c is not None:
            votes[k, c] = 0.9
    votes[2, 2] = 0.4  # a ghost between T2 and T3 that channel T3 half-believes
    assert assign_levels(votes, levels) == [8, 9, None, 10, 11, 12]
    # forced into the sequence (segmentation-path DP) it shifts the levels below it
    assert assign_levels(votes[:5], levels, allow_skips=False) == [8, 9, 10, 11, 12]


def _brute_force_best(votes, bonus, skip_cost):
    """Best objective over every assignment with skips, by enumeration (reference)."""
    from itertools import product as prod

    n, m = votes.shape
    best = -np.inf
    for choice in prod([None, *range(m)], repeat=n):
        ids = [c for c in choice if c is not None]
        if any(b <= a for a, b in zip(ids, ids[1:], strict=False)):
            continue
        best = max(best, _score(votes, list(choice), bonus, None, skip_cost))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_skipping_dp_is_optimal_against_enumeration(seed):
    rng = np.random.default_rng(seed)
    votes = rng.random((4, 5)) ** 3
    bonus = 0.25
    skip_cost = rng.random(4) * 0.5 if seed % 2 else np.zeros(4)
    chosen = increasing_ids_with_skips(votes, np.ones(4), bonus, skip_cost)
    ids = [c for c in chosen if c is not None]
    assert all(b > a for a, b in zip(ids, ids[1:], strict=False))
    got = _score(votes, chosen, bonus, None, skip_cost)
    assert got == pytest.approx(_brute_force_best(votes, bonus, skip_cost))


@pytest.mark.parametrize("seed", range(4))
def test_skipping_dp_agrees_with_the_segmentation_dp_when_every_point_is_clear(seed):
    """Clear diagonal evidence: nothing to skip, so both DPs pick the same ids."""
    from ctseg.inference.postprocess import assign_increasing_ids

    rng = np.random.default_rng(seed)
    n, m = 5, 8
    start = int(rng.integers(0, m - n + 1))
    votes = rng.random((n, m)) * 0.1
    for k in range(n):
        votes[k, start + k] += 0.8
    ref = assign_increasing_ids(votes, np.ones(n))
    assert increasing_ids_with_skips(votes, np.ones(n)) == ref == list(range(start, start + n))


# ------------------------------------------------------------------------------ identification

TRUTH = [{"label": 8 + k, "world": [0.0, 0.0, -25.0 * k]} for k in range(4)]  # T1-T4


def _pred(**moves):
    """Truth copied, then levels (by name) moved or removed (None) or added."""
    names = {"T1": 8, "T2": 9, "T3": 10, "T4": 11, "T5": 12}
    by = {c["label"]: list(c["world"]) for c in TRUTH}
    for name, w in moves.items():
        if w is None:
            by.pop(names[name])
        else:
            by[names[name]] = w
    return [{"label": k, "world": w} for k, w in by.items()]


def test_identification_of_a_swapped_pair():
    pred = _pred(T2=[0.0, 0.0, -50.0], T3=[0.0, 0.0, -25.0], T4=[0.0, 3.0, -75.0])
    tab = identification_table(pred, TRUTH)
    assert list(tab["level"]) == ["T1", "T2", "T3", "T4"]
    assert list(tab["identified"]) == [True, False, False, True]
    np.testing.assert_allclose(tab["error_mm"], [0.0, 25.0, 25.0, 3.0])
    s = identification_scores(tab)
    assert s["id_rate"] == 0.5 and s["false_positives"] == 0
    assert s["mean_error_mm"] == pytest.approx(13.25)


def test_within_20mm_but_closer_to_another_vertebra_is_not_identified():
    tab = identification_table(_pred(T2=[0.0, 0.0, -38.0]), TRUTH)  # 13 mm from T2, 12 from T3
    assert tab.loc[1, "error_mm"] == pytest.approx(13.0)
    assert not tab.loc[1, "identified"]
    assert identification_scores(tab)["id_rate"] == 0.75


def test_identification_of_a_missing_and_an_extra_level():
    pred = _pred(T4=None, T5=[0.0, 0.0, -100.0], T1=[4.0, 0.0, 0.0])
    tab = identification_table(pred, TRUTH)
    assert list(tab["status"]) == ["found", "found", "found", "missing", "extra"]
    assert list(tab["identified"]) == [True, True, True, False, False]
    s = identification_scores(tab)
    assert s["id_rate"] == 0.75  # the extra level is not in the denominator
    assert s["false_positives"] == 1 and s["n_missing"] == 1
    assert s["mean_error_mm"] == pytest.approx(4.0 / 3)  # matched levels only
    assert math.isnan(tab.loc[3, "error_mm"]) and math.isnan(tab.loc[4, "true_x"])


# ------------------------------------------------------------------------------ geometry, input


def test_working_grid_is_lps_and_points_map_back_to_world():
    """A feet-first, right-to-left stored scan: the working grid is LPS and a world point's
    index maps back to the same world point."""
    ct = sitk.Image([20, 16, 24], sitk.sitkInt16)
    ct.SetSpacing((2.0, 2.0, 3.0))
    ct.SetOrigin((50.0, -10.0, 80.0))
    ct.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    work = to_working(ct, [4.0, 4.0, 6.0])
    np.testing.assert_allclose(work.GetDirection(), np.eye(3).ravel())
    assert work.GetSize() == (10, 8, 12)
    w = [20.0, 3.0, 40.0]
    np.testing.assert_allclose(index_to_world(work, world_to_index(work, w)), w, atol=1e-9)


def test_an_oblique_scan_maps_its_points_back_to_world():
    """A bright voxel of a 20-degree tilted grid is found on the working grid at its world
    point (the working grid keeps the oblique direction, LPS-permuted)."""
    a = math.radians(20.0)
    ct = sitk.Image([21, 21, 21], sitk.sitkFloat32) - 1000.0
    ct.SetSpacing((2.0, 2.0, 2.0))
    ct.SetDirection((1.0, 0.0, 0.0, 0.0, math.cos(a), -math.sin(a), 0.0, math.sin(a), math.cos(a)))
    ct.SetOrigin((-20.0, -5.0, 7.0))
    bright = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    bright[12, 6, 9] = 1
    bright = sitk.BinaryDilate(bright, [1, 1, 1])
    bright.CopyInformation(ct)
    ct = ct + 2000.0 * sitk.Cast(bright, sitk.sitkFloat32)
    world = np.array(ct.TransformIndexToPhysicalPoint([12, 6, 9]))
    work = to_working(ct, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(work.GetDirection(), ct.GetDirection(), atol=1e-12)
    com_zyx = np.argwhere(sitk.GetArrayFromImage(work) > 0).mean(axis=0)
    np.testing.assert_allclose(index_to_world(work, com_zyx), world, atol=0.6)
    assert inside(ct, world) and not inside(ct, world + [0.0, 0.0, 60.0])


def test_read_centroids_accepts_our_file_and_world_lists(tmp_path):
    f = tmp_path / "centroids.json"
    f.write_text(json.dumps([{"label": 9, "name": "T2", "x": 1, "y": 2, "z": 3}]))
    assert read_centroids(f) == [{"label": 9, "name": "T2", "world": [1.0, 2.0, 3.0]}]
    assert read_centroids([{"label": "L6", "world": [0, 0, 1]}])[0]["label"] == 25
    f.write_text(json.dumps([{"label": 9, "x": 1}]))
    with pytest.raises(InputError, match="case 'c7'.*centroids.json"):
        read_centroids(f, case="c7")


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="sigmaa"):
        resolve_config({"sigmaa": 3})
    with pytest.raises(ConfigError, match="levels"):
        resolve_config({"levels": ["T1", "Q2"]})
    assert resolve_config({})["levels"] == list(range(8, 25))


def test_weighted_bce_is_smallest_at_the_target():
    import torch

    t = torch.tensor([0.0, 0.2, 0.9, 1.0]).reshape(1, 1, 4)
    p = t.clamp(1e-4, 1 - 1e-4)
    at = weighted_bce(torch.log(p) - torch.log1p(-p), t, 50.0)
    for eps in (0.05, -0.05):
        q = (t + eps).clamp(1e-4, 1 - 1e-4)
        assert weighted_bce(torch.log(q) - torch.log1p(-q), t, 50.0) > at


# ------------------------------------------------------------------------------ training

TINY = {
    "shape": [32, 24, 40],
    "spacing_mm": [8.0, 8.0, 8.0],
    "first_level": "T8",
    "last_level": "L3",
}
TINY_CFG = {
    "levels": "T8-L3",
    "epochs": 3,
    "steps_per_epoch": 20,
    "crop_prob": 0.0,
    "rotate_prob": 0.0,
    "lr": 3e-3,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A localiser overfitted on one small phantom (T8-L3 at 8 mm), 60 steps on one thread."""
    import torch

    from ctseg import phantom
    from ctseg.localisation import train_localiser

    threads = torch.get_num_threads()
    ph = phantom.generate(3, TINY)
    item = {"case": "tiny", "ct": ph.image("hu"), "centroids": ph.centroids}
    out = tmp_path_factory.mktemp("localiser")
    try:
        model = train_localiser([item], [item], out, TINY_CFG, seed=1, device="cpu", threads=1)
    finally:
        torch.set_num_threads(threads)
    return model, item


def test_tiny_overfit_identifies_every_level_of_its_training_case(tiny_run):
    from ctseg.localisation import predict_centroids

    model, item = tiny_run
    pred = predict_centroids(model, item["ct"], device="cpu")
    s = identification_scores(identification_table(pred, item["centroids"]))
    assert s["id_rate"] == 1.0 and s["false_positives"] == 0
    assert s["mean_error_mm"] < 4.0  # 8 mm working voxels
    assert [c["label"] for c in pred] == list(range(15, 23))  # head to feet


def test_prediction_from_an_image_file_and_a_loaded_model(tiny_run, tmp_path):
    from ctseg.localisation import load_localiser, predict_centroids

    model, item = tiny_run
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(item["ct"], str(path))
    a = predict_centroids(load_localiser(model, "cpu"), path)
    b = predict_centroids(model, item["ct"], device="cpu")
    assert [c["label"] for c in a] == [c["label"] for c in b]
    np.testing.assert_allclose([c["world"] for c in a], [c["world"] for c in b], atol=1e-6)
    with pytest.raises(InputError, match="missing.nii.gz"):
        predict_centroids(model, tmp_path / "missing.nii.gz", device="cpu")


def test_model_files_and_history(tiny_run):
    import torch

    model, _ = tiny_run
    blob = torch.load(model, weights_only=True)
    meta = json.loads(blob["meta_json"])
    assert meta["task"] == "centroids" and meta["levels"] == list(range(15, 23))
    assert meta["spacing_mm"] == [8.0, 8.0, 8.0]
    rows = (model.parent / "history.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:4] == ["epoch", "train_loss", "val_loss", "val_id_rate"]
    assert len(rows) == 4 and float(rows[-1].split("\t")[3]) == 1.0
    assert (model.parent / "loss.png").stat().st_size > 0


def test_prediction_does_not_depend_on_how_the_scan_is_stored(tiny_run):
    """The same scan stored feet-first and right-to-left (same world geometry) gives the same
    world centroids: the working grid is canonical LPS."""
    from ctseg.localisation import predict_centroids

    model, item = tiny_run
    ct = item["ct"]
    arr = sitk.GetArrayFromImage(ct)[::-1, :, ::-1]
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    flipped.SetSpacing(ct.GetSpacing())
    far = [ct.GetSize()[0] - 1, 0, ct.GetSize()[2] - 1]
    flipped.SetOrigin(ct.TransformIndexToPhysicalPoint(far))
    flipped.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    a = predict_centroids(model, ct, device="cpu")
    b = predict_centroids(model, flipped, device="cpu")
    assert [c["label"] for c in a] == [c["label"] for c in b]
    np.testing.assert_allclose([c["world"] for c in a], [c["world"] for c in b], atol=1e-3)


def test_interrupted_training_resumes_to_the_same_model(tmp_path):
    import torch

    from ctseg import phantom
    from ctseg.localisation.training import LocaliserTrainer

    ph = phantom.generate(5, {**TINY, "shape": [24, 24, 32]})
    item = {"case": "r", "ct": ph.image("hu"), "centroids": ph.centroids}
    cfg = {**TINY_CFG, "steps_per_epoch": 2, "crop_prob": 0.5, "rotate_prob": 0.5}
    threads = torch.get_num_threads()

    class Interrupted(LocaliserTrainer):
        def end_of_epoch(self, epoch, losses, t0):
            super().end_of_epoch(epoch, losses, t0)
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            Interrupted([item], [], tmp_path / "a", cfg, 3, "cpu", 1).fit()
        resumed = LocaliserTrainer([item], [], tmp_path / "a", cfg, 3, "cpu", 1)
        resumed.fit()
        assert resumed.start_epoch == 1
        straight = LocaliserTrainer([item], [], tmp_path / "b", cfg, 3, "cpu", 1)
        straight.fit()
    finally:
        torch.set_num_threads(threads)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for key in ("epoch", "train_loss", "lr"):
        assert [h[key] for h in resumed.history] == [h[key] for h in straight.history]


def test_a_case_without_centroids_is_an_input_error(tmp_path):
    from ctseg.localisation.training import LocaliserTrainer

    item = {"case": "nocent", "ct": _work_image(), "centroids": None}
    with pytest.raises(InputError, match="nocent"):
        LocaliserTrainer([item], [], tmp_path, TINY_CFG, 0, "cpu", 1).setup()


def test_rotation_augmentation_moves_targets_with_the_image():
    """Blobs painted at the centroids, rotated by interpolation, sit where the analytic
    Gaussians of the rotated centroids are."""
    from types import SimpleNamespace

    from ctseg.localisation.training import rotated

    work = _work_image(spacing=(4.0, 4.0, 4.0))
    pts = np.array([[6.4, 7.6, 8.8], [12.7, 8.0, 9.5]])  # rotated, still inside the grid
    image = gaussian_heatmaps(pts, SHAPE, SP, 8.0).sum(axis=0)
    case = SimpleNamespace(work=work, image=image, points_zyx=np.vstack([pts, [np.nan] * 3]))
    img0, tgt0 = rotated(case, [0.0, 0.0, 0.0], 8.0)
    np.testing.assert_allclose(img0, image, atol=1e-5)
    img, tgt = rotated(case, [12.0, -9.0, 7.0], 8.0)
    assert not tgt[2].any()  # an absent level stays absent
    assert np.abs(img - image).max() > 0.2  # it did move
    np.testing.assert_allclose(img, tgt[:2].sum(axis=0), atol=0.08)  # linear interpolation


# ------------------------------------------------------------------------------ detect_identify head


def _detect_identify_maps(pts: np.ndarray, sigma_mm: float = 6.0) -> np.ndarray:
    """Ideal detect_identify output: channel 0 the any-centroid heatmap, channels 1.. the
    one-hot level of the nearest centroid (a softmax that is certain everywhere)."""
    per_level = gaussian_heatmaps(pts, SHAPE, SP, sigma_mm)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1) * SP
    dist = np.linalg.norm(grid[None] - (pts * SP)[:, None, None, None], axis=-1)
    onehot = (dist == dist.min(0, keepdims=True)).astype(np.float32)
    return np.concatenate([per_level.max(0, keepdims=True), onehot])


def test_detect_identify_decoding_round_trips_points_and_levels():
    """Detection x identification maps of hand-placed centroids (two on the field of view's
    edge) decode to exactly those centroids and levels."""
    work = _work_image()
    levels = [8, 9, 10, 11]
    pts = POINTS[::-1].copy()
    meta = {"levels": levels, "head": "detect_identify", "threshold": 0.3}
    out = decode_centroids(_detect_identify_maps(pts), work, meta)
    assert [c["label"] for c in out] == levels
    for c, p in zip(out, pts, strict=True):
        np.testing.assert_allclose(c["world"], index_to_world(work, p), atol=1e-4)


def test_detect_identify_decoding_renumbers_a_confused_level_by_its_neighbours():
    """The identification map calls the second vertebra T3 as well: the consistency step
    still numbers the column T1-T4."""
    work = _work_image()
    pts = POINTS[::-1].copy()
    maps = _detect_identify_maps(pts)
    ident = maps[1:]
    second = ident[1] > 0
    ident[2][second], ident[1][second] = 0.6, 0.4
    out = decode_centroids(maps, work, {"levels": [8, 9, 10, 11], "head": "detect_identify"})
    assert [c["label"] for c in out] == [8, 9, 10, 11]


def test_detect_identify_loss_is_smallest_for_the_right_level():
    import torch

    from ctseg.localisation.training import detect_identify_loss

    target = torch.from_numpy(gaussian_heatmaps(POINTS, SHAPE, SP, 6.0))[None]
    det = target.max(1).values
    det_logit = torch.logit(det.clamp(1e-4, 1 - 1e-4))
    nearest = target.argmax(1)

    def logits(level_of):
        ident = torch.nn.functional.one_hot(level_of, 4).permute(0, 4, 1, 2, 3).float() * 10
        return torch.cat([det_logit[:, None], ident], 1)

    def id_term(level_of):  # the loss above the detection term's (soft-target) minimum
        loss = detect_identify_loss(logits(level_of), target, 100.0, 1.0, 0.1)
        return float(loss - weighted_bce(det_logit, det, 100.0))

    assert id_term(nearest) < 0.01
    assert id_term((nearest + 1) % 4) > 9.0  # cross entropy of a logit margin of 10
    # the identification term only counts near centroids: far voxels may say anything
    assert id_term(torch.where(det > 0.1, nearest, (nearest + 1) % 4)) < 0.01


def test_level_weights_favour_levels_few_cases_show():
    from types import SimpleNamespace

    from ctseg.localisation.training import level_weights

    nan = [np.nan] * 3
    cases = [
        SimpleNamespace(points_zyx=np.array([[1.0, 2, 3], [4, 5, 6], nan])),
        SimpleNamespace(points_zyx=np.array([[1.0, 2, 3], [4, 5, 6], nan])),
        SimpleNamespace(points_zyx=np.array([[1.0, 2, 3], nan, [7, 8, 9]])),
    ]
    w = level_weights(cases, 1.0).numpy()  # shown by 3, 2 and 1 cases: (n + 1)^-1
    raw = np.array([1 / 4, 1 / 3, 1 / 2])
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)
    assert level_weights(cases, 0.0) is None


def test_a_decoding_change_reuses_the_trained_weights(tiny_run):
    """Retraining with only a decoding key changed resumes the finished checkpoint: no epoch
    runs, the weights stay, and model.pt carries the new decoding."""
    import torch

    from ctseg.localisation import load_localiser, train_localiser

    model_pt, item = tiny_run
    before = {k: v.clone() for k, v in load_localiser(model_pt, "cpu")[0].state_dict().items()}
    threads = torch.get_num_threads()
    try:
        again = train_localiser(
            [item], [item], model_pt.parent, {**TINY_CFG, "threshold": 0.25}, 1, "cpu", 1
        )
    finally:
        torch.set_num_threads(threads)
    model, meta = load_localiser(again, "cpu")
    assert meta["threshold"] == 0.25
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    rows = (model_pt.parent / "history.tsv").read_text().splitlines()
    assert len(rows) == 4  # the three epochs of the first run, none added


# ------------------------------------------------------------------------------ ensemble


def test_ensemble_config_is_checked():
    assert resolve_config({})["ensemble"] == 1
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ConfigError, match="ensemble"):
            resolve_config({"ensemble": bad})


def test_ensemble_maps_are_the_mean_of_the_members_maps():
    """Three tiny networks: the averaged activated maps equal the mean computed by hand, and a
    package without members gives its one network's maps unchanged."""
    import torch

    from ctseg.localisation.predict import MEMBER, ensemble_heatmaps, infer_heatmaps
    from ctseg.models import build_model

    cfg = resolve_config({"levels": "T8-L3", "base_width": 4, "depth": 2})
    nets = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        nets.append(build_model(cfg, 9).eval())
    arr = np.random.default_rng(0).random((12, 8, 16)).astype(np.float32)
    dev = torch.device("cpu")
    meta = {
        "head": "detect_identify",
        "subnet_modules": {f"{MEMBER}1": nets[1], f"{MEMBER}2": nets[2]},
    }
    maps = [infer_heatmaps(n, arr, dev, "detect_identify") for n in nets]
    np.testing.assert_allclose(
        ensemble_heatmaps(nets[0], meta, arr, dev), np.mean(maps, axis=0), atol=1e-6
    )
    alone = {"head": "detect_identify", "subnet_modules": {"refiner": nets[1]}}
    np.testing.assert_array_equal(ensemble_heatmaps(nets[0], alone, arr, dev), maps[0])


def test_an_ensemble_trains_its_members_and_the_package_carries_them(tmp_path):
    """ensemble: 2 trains a second first stage with the next seed in its own folder; model.pt
    holds it as a sub-network, and the member resumes rather than retrains on a rerun."""
    import torch

    from ctseg import phantom
    from ctseg.localisation import load_localiser, predict_centroids, train_localiser
    from ctseg.localisation.predict import MEMBER

    threads = torch.get_num_threads()
    ph = phantom.generate(3, TINY)
    item = {"case": "tiny", "ct": ph.image("hu"), "centroids": ph.centroids}
    cfg = {**TINY_CFG, "epochs": 1, "ensemble": 2}
    try:
        model = train_localiser([item], [item], tmp_path, cfg, seed=1, device="cpu", threads=1)
        member_pt = tmp_path / "member1" / "model.pt"
        train_localiser([item], [item], tmp_path, cfg, seed=1, device="cpu", threads=1)
    finally:
        torch.set_num_threads(threads)
    net, meta = load_localiser(model, "cpu")
    member = meta["subnet_modules"][f"{MEMBER}1"]
    alone, _ = load_localiser(member_pt, "cpu")
    for (k, a), b in zip(member.state_dict().items(), alone.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # the package's member is the member run's network
    assert not torch.equal(  # another seed: another network
        next(iter(net.state_dict().values())), next(iter(member.state_dict().values()))
    )
    history = (tmp_path / "member1" / "history.tsv").read_text().splitlines()
    assert len(history) == 2  # one epoch, not retrained on the rerun
    pts = predict_centroids((net, meta), item["ct"])
    assert all(15 <= p["label"] <= 22 for p in pts)


def test_stages_trained_apart_in_any_order_package_like_one_run(tmp_path):
    """The workflow trains a localiser's stages as separate jobs (train_stage), side by side,
    then packages them: each stage trained alone, in reverse order, then the packaging call,
    gives exactly the weights of the one-call run; a finished stage is not retrained, and an
    unknown stage is a ConfigError naming the known ones."""
    import torch

    from ctseg import phantom
    from ctseg.core.config import localiser_stages
    from ctseg.localisation import load_localiser, train_localiser

    ph = phantom.generate(3, TINY)
    item = {"case": "tiny", "ct": ph.image("hu"), "centroids": ph.centroids}
    cfg = {
        **TINY_CFG, "epochs": 1, "steps_per_epoch": 4, "ensemble": 2,
        "refiner": {"steps": 3, "batch_size": 2, "patch": 16, "spacing_mm": [4.0] * 3},
        "regions": {"steps": 3, "batch_size": 2, "patch": 16, "spacing_mm": [8.0] * 3,
                    "depth": 3},
    }  # fmt: skip
    stages = localiser_stages(cfg)
    assert stages == ["first_stage_0", "first_stage_1", "refiner", "regions"]
    three = ["first_stage_0", "first_stage_1", "first_stage_2"]
    assert localiser_stages({"ensemble": 3, "regions": {}}) == three  # regions need the refiner
    threads = torch.get_num_threads()
    try:
        whole = train_localiser([item], [item], tmp_path / "a", cfg, 1, "cpu", 1)
        for stage in reversed(stages):
            assert train_localiser([item], [item], tmp_path / "b", cfg, 1, "cpu", 1, stage) is None
        assert not (tmp_path / "b" / "model.pt").exists()  # a stage job packages nothing
        with pytest.raises(ConfigError, match="first_stage_0, first_stage_1, refiner, regions"):
            train_localiser([item], [item], tmp_path / "b", cfg, 1, "cpu", 1, "first_stage_5")
        parts = train_localiser([item], [item], tmp_path / "b", cfg, 1, "cpu", 1)
    finally:
        torch.set_num_threads(threads)
    (net_a, meta_a), (net_b, meta_b) = load_localiser(whole, "cpu"), load_localiser(parts, "cpu")
    pairs = [(net_a, net_b)] + [
        (meta_a["subnet_modules"][k], meta_b["subnet_modules"][k])
        for k in ("first_stage_1", "refiner", "regions")
    ]
    for a, b in pairs:
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(va, vb), k
    history = (tmp_path / "b" / "history.tsv").read_text().splitlines()
    assert len(history) == 2  # the first stage's one epoch, not retrained by the packaging call


def test_points_off_the_column_are_dropped():
    """A chain T12-L4 bending 30 mm sideways (scoliosis) keeps every point; two femoral-head
    detections 110 mm either side of the midline (a default-run case, named L5 / L6) go, and
    so does one farther than a stricter bound."""
    chain = [[30.0 * np.sin(k / 2), 40.0, -40.0 * k] for k in range(6)]
    heads = [[110.0, 0.0, -300.0], [-112.0, 0.0, -295.0]]
    keep = on_the_column(chain + heads)
    assert keep.tolist() == [True] * 6 + [False, False]
    # x = 0, 14.4, 25.2, 29.9, 27.3, 17.9 mm, median 21.6: the first is 21.6 mm out
    assert on_the_column(chain, 20.0).tolist() == [False] + [True] * 5
    assert on_the_column([[500.0, 0.0, 0.0]]).tolist() == [True]  # one point: no reference


def test_first_stage_batches_have_no_level_two_voxels_deep(tmp_path):
    """Crops along the spine as short as 64 mm (8 voxels at 8 mm) are padded with air to a
    depth whose U-Net levels are never 2 deep (oneDNN's bf16 weight gradient is computed from
    uninitialised memory there: ``bf16_safe_depth``); the target is padded alike."""
    from ctseg import phantom
    from ctseg.localisation.training import LocaliserTrainer

    ph = phantom.generate(3, TINY)
    item = {"case": "tiny", "ct": ph.image("hu"), "centroids": ph.centroids}
    cfg = {**TINY_CFG, "crop_prob": 1.0, "min_crop_mm": 64.0}
    tr = LocaliserTrainer([item], [], tmp_path, cfg, seed=3, device="cpu", threads=1)
    tr.setup()
    depths = set()
    for _ in range(30):
        x, y = tr.sample_batch()
        assert x.shape[2:] == y.shape[2:]
        depths.add(int(x.shape[2]))
    assert min(depths) == 24  # the shortest crops (8-16 voxels) padded to 24, not 16
    for d in depths:
        assert d % 8 == 0 and 2 not in (d, d // 2, d // 4, d // 8), d


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_a_refiner_patch_that_bf16_would_train_two_deep_is_refused(tmp_path):
    """A 16^3 refiner patch through 4 levels (16, 8, 4, 2) in CPU bf16: refused before a step."""
    from ctseg import phantom
    from ctseg.localisation.training import LocaliserTrainer

    ph = phantom.generate(3, TINY)
    item = {"case": "tiny", "ct": ph.image("hu"), "centroids": ph.centroids}
    cfg = {
        **TINY_CFG, "cpu_bf16": True,
        "refiner": {"steps": 3, "batch_size": 2, "patch": 16, "depth": 4, "spacing_mm": [4.0] * 3},
    }  # fmt: skip
    tr = LocaliserTrainer([item], [], tmp_path, cfg, seed=3, device="cpu", threads=1)
    with pytest.raises(ConfigError, match="refiner: a training patch 16 voxels deep.*make it 24"):
        tr.fit_stage("refiner")
    assert not (tmp_path / "checkpoints" / "refiner.pt").exists()


def test_the_localiser_predicts_in_the_precision_it_trained_in():
    """A package trained with ``cpu_bf16`` runs all three stages' forward passes (first stage,
    refiner, region network) in bf16 on a bf16 CPU, close to float32; without the key, or on a
    CPU without native bf16, every convolution is float32 and the maps are exactly those of
    a plain forward pass."""
    import torch

    from ctseg.localisation.predict import forward_precision, infer_heatmaps
    from ctseg.localisation.refine import patch_heatmaps
    from ctseg.localisation.regions import region_probs
    from ctseg.models import build_model
    from ctseg.training.precision import cpu_has_bf16

    cfg = resolve_config({"levels": "T8-L3", "base_width": 4, "depth": 2})
    torch.manual_seed(5)
    first, refiner, regions = (build_model(cfg, n).eval() for n in (9, 1, 4))
    seen = []
    for net in (first, refiner, regions):
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
        conv.register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
    arr = np.random.default_rng(5).random((16, 16, 16)).astype(np.float32)
    work = sitk.GetImageFromArray(arr)
    dev = torch.device("cpu")

    def run(meta):
        seen.clear()
        amp = forward_precision(meta, dev)
        maps = (
            infer_heatmaps(first, arr, dev, "detect_identify", amp),
            patch_heatmaps(refiner, arr, [np.zeros(3, int)], 8, dev, amp),
            region_probs(regions, {"patch": 8}, work, arr, [[7.0, 7.0, 7.0]], dev, amp),
        )
        return maps, set(seen)

    f32, dtypes = run({})
    assert dtypes == {torch.float32}
    np.testing.assert_array_equal(f32[0], infer_heatmaps(first, arr, dev, "detect_identify"))
    bf, dtypes = run({"cpu_bf16": True})
    if cpu_has_bf16():
        assert dtypes == {torch.bfloat16}
        for a, b in zip(bf, f32, strict=True):
            assert a.dtype == b.dtype and not np.array_equal(a, b)
            assert np.abs(a - b).max() < 0.05  # activated maps in [0, 1]
    else:
        assert dtypes == {torch.float32}
        for a, b in zip(bf, f32, strict=True):
            np.testing.assert_array_equal(a, b)


def test_the_localiser_sees_the_ct_with_its_metal_filled(monkeypatch):
    """``metal_fill_hu`` in the package: the networks get the CT with its metal (>= 3000 HU)
    replaced; without it the CT as it is. A decoding key: it does not change what is trained,
    and a value at the metal threshold or a boolean is a ConfigError."""
    import ctseg.localisation.predict as lp
    from ctseg.localisation.training import DECODE_KEYS

    seen = []

    def fake_first_stage(model, meta, ct):
        seen.append(int(sitk.GetArrayFromImage(ct).max()))
        return None, None

    monkeypatch.setattr(lp, "first_stage", fake_first_stage)
    monkeypatch.setattr(lp, "decode_centroids", lambda heat, work, meta: [])
    hu = np.full((10, 12, 12), 40, np.int16)
    hu[4:6, 5:7, 5:7] = 7000
    ct = sitk.GetImageFromArray(hu)
    assert lp.predict_centroids((None, {"metal_fill_hu": 250.0}), ct) == []
    assert lp.predict_centroids((None, {}), ct) == []
    assert seen == [250, 7000]
    assert "metal_fill_hu" in DECODE_KEYS
    assert resolve_config({"metal_fill_hu": 250})["metal_fill_hu"] == 250
    assert resolve_config({})["metal_fill_hu"] is None
    for bad in (3000, True, "250"):
        with pytest.raises(ConfigError, match="metal_fill_hu"):
            resolve_config({"metal_fill_hu": bad})
