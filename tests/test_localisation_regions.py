"""The localiser's anatomical anchors (ctseg.localisation.regions): classes, evidence, training."""

from __future__ import annotations

import numpy as np
import pytest

from ctseg.core.errors import ConfigError
from ctseg.localisation.decode import assign_levels, chain_steps, resolve_levels
from ctseg.localisation.regions import (
    DEFAULT_CLASSES,
    REGIONS,
    REGIONS_THORAX3,
    RegionClasses,
    RegionTrainer,
    combine,
    level_likelihood,
    resolve_regions,
)


def test_region_classes_follow_the_anchors_and_transitional_anatomy():
    names = lambda m, ids: [REGIONS[m[i]] for i in ids]  # noqa: E731
    normal = DEFAULT_CLASSES.of_case([*range(1, 25), 26])  # no T13 (28), no L6 (25)
    assert names(normal, [1, 2, 3, 6, 7, 8, 9, 17, 18, 19, 20, 23, 24, 26]) == [
        "C1", "C2", "C3-C6", "C3-C6", "C7", "T1", "T2-T10", "T2-T10", "T11", "T12", "L1-L4",
        "L1-L4", "L5", "sacrum",
    ]  # fmt: skip
    # a 13th rib pair: T13 carries the last ribs, T12 the second-last, T11 is mid-thoracic
    t13 = DEFAULT_CLASSES.of_case([17, 18, 19, 28, 20])
    assert names(t13, [18, 19, 28]) == ["T2-T10", "T11", "T12"]
    # the thorax in three: the same rules move T11 into T10's class
    three = RegionClasses(REGIONS_THORAX3)
    t13 = three.of_case([17, 18, 19, 28, 20])
    assert [three.names[t13[v]] for v in (16, 17, 18, 19, 28)] == [
        "T8-T10",
        "T8-T10",
        "T8-T10",
        "T11",
        "T12",
    ]
    normal = three.of_case([*range(1, 25), 26])
    assert [three.names[normal[v]] for v in (9, 11, 12, 14, 15, 17)] == [
        "T2-T4",
        "T2-T4",
        "T5-T7",
        "T5-T7",
        "T8-T10",
        "T8-T10",
    ]

    # an L6: it is the last lumbar level, L5 a middle one
    l6 = DEFAULT_CLASSES.of_case([23, 24, 25, 26])
    assert names(l6, [24, 25, 26]) == ["L1-L4", "L5", "sacrum"]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["C1-C7", "T1-T12", "L1-L5", "sacrum"], "end with 'none'"),
        (["C1-C7", "T1-T11", "L1-L5", "sacrum", "none"], "leave out T12"),
        (["C1-C7", "T1-T12", "T12-L5", "sacrum", "none"], "T12 is in two classes"),
        (["T1-T12", "C1-C7", "L1-L5", "sacrum", "none"], "head-to-feet order"),
        (["C1-C7", "T1-T13", "L1-L5", "sacrum", "none"], "not a run of the normal"),
        (["C1-C7", "T1-T12", "L1-L5", "S1", "none"], "not a level or a run"),
    ],
)
def test_a_taxonomy_that_does_not_cover_the_spine_once_in_order_is_refused(names, message):
    with pytest.raises(ConfigError, match=message):
        resolve_regions({"classes": names})


def test_qc_anchor_classes_are_the_region_classes_that_hold_one_level():
    """The QC's ``unanchored`` check trusts a naming only through classes that name a single
    level: derived here from the normal spine's class map, they must be the QC's list."""
    from ctseg.formats.qc import ANCHOR_CLASSES

    normal = DEFAULT_CLASSES.of_case([*range(1, 25), 26])
    held = {c: sum(1 for v in [*range(1, 25), 26] if normal[v] == c) for c in set(normal.values())}
    assert sorted(REGIONS[c] for c, n in held.items() if n == 1) == sorted(ANCHOR_CLASSES)
    assert {"C3-C6", "T2-T10", "L1-L4"} == {REGIONS[c] for c, n in held.items() if n > 1}


def test_level_likelihood_divides_each_class_by_its_levels():
    levels = resolve_levels("T1-L5")  # T1 | T2-T10 (9) | T11 | T12 | L1-L4 (4) | L5
    p = np.zeros((1, len(REGIONS)))
    p[0, REGIONS.index("T2-T10")] = 0.9
    p[0, REGIONS.index("T12")] = 0.1
    lik = level_likelihood(p, levels)[0]
    assert lik[levels.index(9)] == pytest.approx(0.1)  # T2: 0.9 over 9 levels
    assert lik[levels.index(19)] == pytest.approx(0.1)  # T12: a class of its own
    assert lik[levels.index(20)] == 0.0
    # the thorax in three: its 14 columns, its class sizes
    three = RegionClasses(REGIONS_THORAX3)
    p = np.zeros((1, len(three)))
    p[0, three.index("T2-T4")] = 0.9
    p[0, three.index("T12")] = 0.1
    lik = level_likelihood(p, levels, three)[0]
    assert lik[levels.index(9)] == pytest.approx(0.3)  # T2: 0.9 over 3 levels
    assert lik[levels.index(12)] == 0.0 and lik[levels.index(19)] == pytest.approx(0.1)


def test_one_anchor_renames_a_chain_the_first_stage_shifted():
    """Five points T10-L2 that the first stage calls T9-L1 (each one level too high, with some
    doubt); the region network sees the last rib pair on the third point. With the chain bonus
    of the region decoding (1.0: one break costs more than any one point's preference) the DP
    names all five right; without the anchor it keeps the shift, and with the first stage's
    bonus (0.25) the anchor renames only the points whose class it tells apart."""
    levels = resolve_levels("T1-L5")
    truth = [17, 18, 19, 20, 21]
    votes = np.full((5, len(levels)), 0.02)
    for i, t in enumerate(truth):
        votes[i, levels.index(t) - 1] = 0.6  # the first stage: one level up
        votes[i, levels.index(t)] = 0.3
    votes /= votes.sum(axis=1, keepdims=True)
    assert assign_levels(votes, levels) == [16, 17, 18, 19, 20]
    p = np.full((5, len(REGIONS)), 0.02)
    for i, r in enumerate(["T2-T10", "T11", "T12", "L1-L4", "L1-L4"]):
        p[i, REGIONS.index(r)] = 0.8
    p /= p.sum(axis=1, keepdims=True)
    both = combine(votes, p, levels, 1.0)
    assert assign_levels(both, levels, consecutive_bonus=1.0) == truth
    assert assign_levels(votes, levels, consecutive_bonus=1.0) == [16, 17, 18, 19, 20]
    assert assign_levels(both, levels, consecutive_bonus=0.25) == [16, 18, 19, 20, 21]


def test_chain_steps_see_a_missed_vertebra_and_keep_the_names_below_it():
    """Points 30 mm apart with one vertebra missing between the 3rd and 4th: the expected step
    there is 2, so the DP with steps names the points below the gap by their evidence; the
    plain consecutive bonus (1.0) renumbers them to close the gap."""
    z = [0.0, -30.0, -60.0, -120.0, -150.0]
    worlds = [[0.0, 0.0, v] for v in z]
    steps = chain_steps(worlds)
    assert steps[2, 3] == 2 and steps[0, 1] == 1 and steps[0, 4] == 5 and steps[3, 4] == 1
    levels = resolve_levels("T1-L5")
    truth = [15, 16, 17, 19, 20]  # T8, T9, T10, (T11 missed), T12, L1
    votes = np.full((5, len(levels)), 0.02)
    for i, t in enumerate(truth):
        votes[i, levels.index(t)] = 0.45
        votes[i, levels.index(t) - 1] = 0.35
    votes /= votes.sum(axis=1, keepdims=True)
    assert assign_levels(votes, levels, 1.0, steps=steps) == truth
    assert assign_levels(votes, levels, 1.0) != truth


def test_regions_config_is_checked():
    assert resolve_regions(False) is None
    assert resolve_regions(True)["patch"] == 32
    with pytest.raises(ConfigError, match="unknown regions key"):
        resolve_regions({"stepz": 3})
    with pytest.raises(ConfigError, match="regions.scale"):
        resolve_regions({"scale": [1.3, 0.75]})
    with pytest.raises(ConfigError, match="regions.patch"):
        resolve_regions({"patch": 24})
    from ctseg.localisation.training import resolve_config

    with pytest.raises(ConfigError, match="'regions' needs the refiner"):
        resolve_config({"regions": {"steps": 3}})


def _phantom_item():
    from ctseg import phantom

    ph = phantom.generate(3, {"shape": [32, 24, 40], "spacing_mm": [8.0, 8.0, 8.0],
                              "first_level": "T8", "last_level": "L3"})  # fmt: skip
    return {"case": "tiny", "ct": ph.image("hu"), "centroids": ph.centroids}


def test_training_cubes_carry_each_centroids_class_around_it(tmp_path):
    """Without jitter, rotation or zoom, each cube's centre voxel is its drawn centroid: the
    target there is that level's class; voxels far from every centroid are ignored."""
    import torch

    item = _phantom_item()
    cfg = resolve_regions({"offset_mm": 1e-6, "rotate_deg": 0.0, "scale": [1.0, 1.0],
                           "batch_size": 16, "spacing_mm": [4.0] * 3,
                           "background_prob": 0.0})  # fmt: skip
    cfg["hu_window"], cfg["levels"] = [-1000.0, 2000.0], resolve_levels("T8-L3")
    tr = RegionTrainer([item], cfg, tmp_path, 5, torch.device("cpu"))
    classes = DEFAULT_CLASSES.of_case(cfg["levels"])
    expected = {classes[v] for v in cfg["levels"]}
    x, y = tr.sample()
    assert x.shape == (16, 1, 32, 32, 32) and y.shape == (16, 32, 32, 32)
    centre = y[:, 15:17, 15:17, 15:17].reshape(16, -1)
    for row in centre:  # the centre voxels belong to one centroid, of a class the case holds
        assert len(set(row.tolist())) == 1 and int(row[0]) in expected
    assert (y[:, 0, 0, 0] == -100).all()  # a corner, 80 mm from the centre: no target
    labelled = (y != -100).float().mean()
    assert 0.002 < float(labelled) < 0.05  # a few 2-voxel balls per cube


def test_a_localiser_with_regions_trains_saves_and_predicts(tmp_path):
    """The region network travels in model.pt as a sub-network and is used by prediction:
    a tiny overfit on one case identifies every level."""
    import torch

    from ctseg.inference.package import read_plan
    from ctseg.localisation import (
        identification_scores,
        identification_table,
        predict_centroids,
        train_localiser,
    )

    item = _phantom_item()
    cfg = {
        "levels": "T8-L3", "epochs": 3, "steps_per_epoch": 20, "crop_prob": 0.0,
        "rotate_prob": 0.0, "lr": 3e-3,
        "refiner": {"steps": 150, "batch_size": 4, "patch": 16, "spacing_mm": [4.0] * 3,
                    "sigma_mm": 5.0, "background_prob": 0.1},
        "regions": {"steps": 30, "batch_size": 4, "patch": 16, "spacing_mm": [8.0] * 3,
                    "depth": 3},
    }  # fmt: skip
    threads = torch.get_num_threads()
    try:
        model = train_localiser([item], [], tmp_path, cfg, seed=1, device="cpu", threads=1)
    finally:
        torch.set_num_threads(threads)
    _, plan, _ = read_plan(model)
    assert plan["subnets"]["regions"]["n_classes"] == len(REGIONS)
    assert plan["regions"]["patch"] == 16
    assert (tmp_path / "checkpoints" / "regions.pt").is_file()
    pred = predict_centroids(model, item["ct"], device="cpu")
    s = identification_scores(identification_table(pred, item["centroids"]))
    assert s["id_rate"] == 1.0 and s["false_positives"] == 0
    # the QC's anatomy rows: one per labelled centroid, the label's class as expected
    from ctseg.localisation.predict import load_localiser
    from ctseg.localisation.regions import anatomy_rows

    truth = [{"label": c["label"], "world": [c["x"], c["y"], c["z"]]} for c in item["centroids"]]
    rows = anatomy_rows(load_localiser(model, "cpu"), item["ct"], truth)
    classes = DEFAULT_CLASSES.of_case([c["label"] for c in truth])
    assert [r["label"] for r in rows] == [c["label"] for c in truth]
    assert [r["expected"] for r in rows] == [REGIONS[classes[c["label"]]] for c in truth]
    assert all(0 <= r["p_expected"] <= r["p_seen"] <= 1 for r in rows)


def test_background_cubes_teach_none_at_their_centre(tmp_path):
    """Cubes centred off the vertebrae (bone >= 30 mm from every centroid, or any body voxel)
    carry "none" at their centre, so ghosts and the pelvis can be told from vertebrae."""
    import torch

    item = _phantom_item()
    cfg = resolve_regions({"background_prob": 0.999, "batch_size": 16, "spacing_mm": [4.0] * 3})
    cfg["hu_window"], cfg["levels"] = [-1000.0, 2000.0], resolve_levels("T8-L3")
    tr = RegionTrainer([item], cfg, tmp_path, 5, torch.device("cpu"))
    _, y = tr.sample()
    centre = y[:, 15:17, 15:17, 15:17].reshape(16, -1)
    assert int((centre == DEFAULT_CLASSES.none).all(dim=1).sum()) >= 12


def test_combine_scales_points_by_their_vertebra_probability():
    levels = resolve_levels("T1-L5")
    votes = np.full((2, len(levels)), 1.0 / len(levels))
    p = np.zeros((2, len(REGIONS)))
    p[0, REGIONS.index("T12")] = 1.0
    p[1, REGIONS.index("T12")], p[1, REGIONS.index("none")] = 0.1, 0.9
    out = combine(votes, p, levels, 1.0)
    assert out[0].sum() == pytest.approx(1.0) and out[1].sum() == pytest.approx(0.1)
    assert levels[int(out[0].argmax())] == 19 and levels[int(out[1].argmax())] == 19
    # an 11-class network (no "none") scales nothing
    np.testing.assert_allclose(combine(votes, p[:, :-1], levels, 1.0)[0], out[0])


def test_points_below_the_sacrum_and_twin_detections_leave_the_chain():
    """A point 60 mm below the one seen as the sacrum (the coccyx, the pelvis) is dropped; a
    point 10 mm from its neighbour in a chain spaced 40 mm is the same vertebra found twice:
    the weaker one goes, and chain_steps calls that pair 0 levels apart."""
    from ctseg.localisation.predict import drop_duplicates
    from ctseg.localisation.regions import below_sacrum

    worlds = [[0.0, 0.0, z] for z in (0.0, -40.0, -80.0, -90.0, -150.0)]
    p = np.full((5, len(REGIONS)), 0.01)
    for i, r in enumerate(["L1-L4", "L1-L4", "sacrum", "sacrum", "L5"]):
        p[i, REGIONS.index(r)] = 0.9
    np.testing.assert_array_equal(
        below_sacrum(worlds, p, 0.5, 30.0), [False, False, False, False, True]
    )
    assert not below_sacrum(worlds, p[:, ::-1], 0.5, 30.0).any()  # no sacrum seen
    assert chain_steps(worlds[:4])[2, 3] == 0 and chain_steps(worlds[:4])[1, 2] == 1
    votes = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.6], [0.2, 0.9]])
    kept, v = drop_duplicates(worlds[:4], votes)
    assert [w[2] for w in kept] == [0.0, -40.0, -90.0]
    np.testing.assert_array_equal(v, votes[[0, 1, 3]])


#: Network outputs recorded on a held-out draw (seed 8202, low_dose family: C1-C5 alone in
#: view) from the default run's localiser, per refined point head to feet: the first stage's
#: level softmax over the default config's 27 levels (every point "C7" near 0.3, C1 and C2
#: below 0.02) and the region network's classes (C1, C2, then C3-C6).
_NECK_VOTES = np.array([
    [0.006, 0.001, 0.000, 0.000, 0.004, 0.165, 0.323, 0.001, 0.001, 0.010, 0.068, 0.079, 0.114, 0.086, 0.043, 0.048, 0.038, 0.011, 0.001, 0.000, 0.000, 0.000, 0.000, 0.000, 0.000, 0.000, 0.000],
    [0.011, 0.003, 0.001, 0.001, 0.009, 0.162, 0.310, 0.004, 0.003, 0.022, 0.068, 0.053, 0.074, 0.061, 0.029, 0.067, 0.091, 0.031, 0.002, 0.000, 0.000, 0.000, 0.000, 0.000, 0.000, 0.000, 0.000],
    [0.013, 0.003, 0.001, 0.000, 0.006, 0.122, 0.351, 0.004, 0.000, 0.007, 0.045, 0.067, 0.098, 0.088, 0.068, 0.067, 0.044, 0.012, 0.001, 0.000, 0.000, 0.001, 0.001, 0.000, 0.001, 0.000, 0.000],
    [0.018, 0.006, 0.002, 0.001, 0.011, 0.122, 0.322, 0.015, 0.000, 0.002, 0.029, 0.071, 0.108, 0.099, 0.094, 0.064, 0.024, 0.006, 0.001, 0.001, 0.000, 0.001, 0.001, 0.001, 0.001, 0.000, 0.001],
    [0.018, 0.011, 0.008, 0.006, 0.020, 0.082, 0.193, 0.062, 0.017, 0.031, 0.048, 0.054, 0.077, 0.054, 0.080, 0.079, 0.088, 0.033, 0.007, 0.003, 0.002, 0.003, 0.005, 0.004, 0.004, 0.002, 0.010],
])  # fmt: skip
_NECK_REGIONS = np.array([
    [0.510, 0.347, 0.012, 0.005, 0.016, 0.001, 0.001, 0.000, 0.000, 0.006, 0.078, 0.024],
    [0.063, 0.589, 0.299, 0.008, 0.001, 0.003, 0.000, 0.000, 0.000, 0.000, 0.001, 0.034],
    [0.000, 0.012, 0.985, 0.001, 0.000, 0.000, 0.000, 0.000, 0.000, 0.000, 0.000, 0.002],
    [0.000, 0.003, 0.993, 0.001, 0.000, 0.000, 0.000, 0.000, 0.000, 0.000, 0.000, 0.002],
    [0.000, 0.029, 0.874, 0.028, 0.000, 0.002, 0.000, 0.000, 0.000, 0.000, 0.000, 0.067],
])  # fmt: skip


def test_the_first_stage_floor_lets_the_neck_be_named_from_c1_and_c2():
    """With the plain product the near-zero first-stage evidence for C1 and C2 outweighs the
    region network, and the chain is named C3-C7; with the default floor (the first stage
    "right, or knowing nothing") the anchors name it C1-C5, the truth."""
    from ctseg.localisation.predict import name_chain

    levels = resolve_levels([*range(1, 20), 28, *range(20, 27)])
    worlds = [[0.3, 14.7, -4.3], [0.2, 18.4, -12.8], [0.1, 19.8, -28.6], [0.1, 20.3, -40.9],
              [-0.1, 20.0, -54.8]]  # fmt: skip
    regions = resolve_regions({})
    meta = {"levels": levels, "refiner": {}, "optional_cost": 0.5, "regions": regions}
    names = [p["name"] for p in name_chain(worlds, _NECK_VOTES, _NECK_REGIONS, meta)]
    assert names == ["C1", "C2", "C3", "C4", "C5"]
    plain = {**meta, "regions": {**regions, "first_stage_floor": 0.0}}
    names = [p["name"] for p in name_chain(worlds, _NECK_VOTES, _NECK_REGIONS, plain)]
    assert names == ["C3", "C4", "C5", "C6", "C7"]
    with pytest.raises(ConfigError, match="first_stage_floor"):
        resolve_regions({"first_stage_floor": 1.5})


def test_decoding_keys_leave_the_region_checkpoint_identity_alone(tmp_path):
    """A finished region network resumes (same run id) when only how its output is decoded
    changes; a training key (steps) makes it another run."""
    import torch

    item = _phantom_item()
    runs = {}
    for name, over in {"base": {}, "decoding": {"weight": 2.0, "first_stage_floor": 0.1},
                       "training": {"steps": 7}}.items():  # fmt: skip
        cfg = resolve_regions({"spacing_mm": [8.0] * 3, "patch": 16, "depth": 3, **over})
        cfg["hu_window"], cfg["levels"] = [-1000.0, 2000.0], resolve_levels("T8-L3")
        runs[name] = RegionTrainer([item], cfg, tmp_path / name, 5, torch.device("cpu")).run_id
    assert runs["decoding"] == runs["base"] != runs["training"]


def test_one_sacrum_point_stays_of_several_found_on_it():
    """L2-L5 40 mm apart, then three points on the sacrum 12-17 mm apart (its S1-S3 bodies):
    only the one with the highest sacrum probability stays. An L5 called "sacrum" a whole step
    above the sacrum, and a lone sacrum point, are kept."""
    from ctseg.localisation.regions import one_sacrum

    z = [0.0, -40.0, -80.0, -120.0, -168.0, -185.0, -197.0]
    worlds = [[0.0, 0.0, v] for v in z]
    p = np.full((7, len(REGIONS)), 0.01)
    for i, (cls, v) in enumerate([("L1-L4", 0.9), ("L1-L4", 0.9), ("L1-L4", 0.9), ("L5", 0.6),
                                  ("sacrum", 0.5), ("sacrum", 0.7), ("sacrum", 0.55)]):  # fmt: skip
        p[i, REGIONS.index(cls)] = v
    keep = one_sacrum(worlds, p)
    assert keep.tolist() == [True, True, True, True, False, True, False]
    p[3, REGIONS.index("sacrum")] = 0.8  # L5 seen as the sacrum, 48 mm above the next point
    assert one_sacrum(worlds, p).tolist() == [True, True, True, True, False, True, False]
    assert one_sacrum(worlds[:5], p[:5]).tolist() == [True] * 5


def test_a_package_decodes_with_the_taxonomy_its_region_network_learnt():
    """Eight points 22 mm apart with no first-stage preference: the thorax-in-three classes
    seen along them (T2-T4 twice, T5-T7 three times, T8-T10 three times) fit one naming
    only, T3-T10, and the package's stored class names are what decoding reads them by. A
    package written before packages named their classes decodes with the default ones."""
    from ctseg.localisation.predict import name_chain
    from ctseg.localisation.regions import classes_of, regions_spec

    levels = resolve_levels([*range(1, 20), 28, *range(20, 27)])
    three = RegionClasses(REGIONS_THORAX3)
    seen = ["T2-T4"] * 2 + ["T5-T7"] * 3 + ["T8-T10"] * 3
    p = np.full((8, len(three)), 0.01)
    for i, cls in enumerate(seen):
        p[i, three.index(cls)] = 0.9
    p /= p.sum(axis=1, keepdims=True)
    worlds = [[0.0, 0.0, -22.0 * i] for i in range(8)]
    votes = np.full((8, len(levels)), 1.0 / len(levels))
    regions = resolve_regions({"classes": list(REGIONS_THORAX3)})
    regions["hu_window"] = [-1000.0, 2000.0]
    spec = regions_spec(regions)
    assert classes_of(spec) == three and classes_of({}).names == REGIONS
    meta = {"levels": levels, "refiner": {}, "optional_cost": 0.5, "regions": spec}
    names = [q["name"] for q in name_chain(worlds, votes, p, meta)]
    assert names == [f"T{k}" for k in range(3, 11)]
