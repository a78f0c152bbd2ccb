"""Synthetic localiser training cases (ctseg.localisation.synthetic): config validation, seeds,
and draws that carry the population's centroids and nothing of a label map."""

from __future__ import annotations

import numpy as np
import pytest

from ctseg.core.errors import ConfigError
from ctseg.localisation.synthetic import (
    SYNTHETIC_SEED_BASE,
    resolve_synthetic,
    synthetic_items,
    synthetic_seeds,
)
from ctseg.localisation.training import LocaliserTrainer, resolve_config

# a small population (thoracolumbar, coarse voxels) so that a draw takes a fraction of a second
POP = {
    "levels": ["T10", "L5"],
    "min_levels": 5,
    "body_scale": [0.8, 1.2],
    "spacing_inplane_mm": [3.0, 4.0],
    "spacing_slice_mm": [3.0, 5.0],
    "max_voxels": 200_000,
}


@pytest.mark.parametrize(
    "off", [None, False, {"cases": 0, "population": POP}, {"refiner_cases": 0, "regions_cases": 0}]
)
def test_no_cases_is_off(off):
    assert resolve_synthetic(off) is None
    assert resolve_config({"synthetic": off})["synthetic"] is None


def test_defaults_are_filled_in():
    out = resolve_synthetic({"cases": 4, "population": POP})
    assert out == {
        "cases": 4,
        "population": POP,
        "max_voxels": 1_500_000,
        "refiner_cases": 0,
        "regions_cases": 0,
    }
    # the region network's draws alone: a block, with no draw for the first stage
    only = resolve_synthetic({"regions_cases": 6, "population": POP})
    assert only["cases"] == 0 and only["regions_cases"] == 6


@pytest.mark.parametrize(
    "block, key",
    [
        ({"cases": 3, "population": POP, "draws": 2}, "draws"),
        ({"cases": -3, "population": POP}, "synthetic.cases"),
        ({"cases": 3, "population": POP, "max_voxels": -1}, "synthetic.max_voxels"),
        ({"cases": 3, "population": POP, "refiner_cases": 4}, "synthetic.refiner_cases"),
        ({"regions_cases": -1, "cases": 3, "population": POP}, "synthetic.regions_cases"),
        ({"regions_cases": 3}, "synthetic.population"),
        ({"cases": 3}, "synthetic.population"),
        ({"cases": 3, "population": {**POP, "body_scale": [1.3, 0.75]}}, "body_scale"),
        ({"cases": 3, "population": {**POP, "noise": [10, 20]}}, "noise"),
        ("yes", "synthetic"),
    ],
)
def test_bad_blocks_name_the_key(block, key):
    with pytest.raises(ConfigError, match=key):
        resolve_synthetic(block)
    with pytest.raises(ConfigError, match=key):
        resolve_config({"synthetic": block})


def test_seeds_are_deterministic_distinct_and_outside_the_case_sheets():
    a = synthetic_seeds(20261122, 50)
    assert a == synthetic_seeds(20261122, 50)
    assert len(set(a)) == 50 and min(a) >= SYNTHETIC_SEED_BASE and max(a) < 2**32
    assert synthetic_seeds(20261122, 10) == a[:10]  # the refiner's draws are the first ones
    assert not set(synthetic_seeds(1, 50)) & set(a)  # another run seed, another stream


def test_draws_are_the_population_phantoms_with_their_centroids():
    """Each item is the phantom of its seed drawn from the population (checked against the
    generator called directly), with centroids of visible levels only and no label map."""
    from ctseg import phantom
    from ctseg.phantom.population import case_params

    cfg = resolve_synthetic({"cases": 3, "population": POP, "max_voxels": 200_000})
    items = list(synthetic_items(cfg, 7, 3))
    assert len(items) == 3 and len({it["case"] for it in items}) == 3
    again = list(synthetic_items(cfg, 7, 2))
    for it, seed, rep in zip(items, synthetic_seeds(7, 3), [*again, None], strict=True):
        assert set(it) == {"case", "ct", "centroids"}
        assert it["case"] == f"synthetic{seed}"
        ph = phantom.generate(seed, case_params({"population": POP}, it["case"], seed))
        assert it["centroids"] == ph.centroids
        img = it["ct"]
        assert img.GetSize() == ph.image("hu").GetSize()
        assert np.prod(img.GetSize()) <= 200_000 * 1.05
        levels = [c["label"] for c in it["centroids"]]
        assert len(levels) >= 5 and all(20 <= lab <= 26 or 17 <= lab <= 19 for lab in levels)
        if rep is not None:
            assert rep["centroids"] == it["centroids"]


def test_trainer_adds_the_draws_to_its_training_cases(tmp_path):
    from ctseg import phantom

    ph = phantom.generate(
        3,
        {"shape": [24, 20, 32], "spacing_mm": [8.0] * 3, "first_level": "T12", "last_level": "L4"},
    )
    item = {"case": "own", "ct": ph.image("hu"), "centroids": ph.centroids}
    cfg = {"levels": "T10-L5", "synthetic": {"cases": 2, "population": POP}}
    trainer = LocaliserTrainer([item], [item], tmp_path, cfg, seed=5, device="cpu", threads=1)
    trainer.setup()
    names = [c.name for c in trainer.train]
    assert names == ["own", *(f"synthetic{s}" for s in synthetic_seeds(5, 2))]
    assert len(trainer.val) == 1
    # the heatmap target of a synthetic case peaks (1.0 at the voxel nearest) at its centroids
    case = trainer.train[1]
    tgt = case.target
    assert tgt.shape[1:] == case.image.shape
    present = [k for k in range(len(case.points_zyx)) if np.isfinite(case.points_zyx[k]).all()]
    assert present and all(tgt[k].max() > 0.5 for k in present)


def test_the_region_network_alone_trains_on_its_draws(tmp_path, monkeypatch):
    """``regions_cases`` draws go to the region network and nowhere else: the first stage
    (``cases`` 0) and the refiner (``refiner_cases`` 0) see the case sheet's case only."""
    from ctseg import phantom
    from ctseg.localisation import training

    class Spy:
        def __init__(self, items, cfg, out_dir, seed, dev, autocast, channels_last):
            self.items = items

        def fit(self):
            return [it["case"] for it in self.items]

    monkeypatch.setattr(training, "RegionTrainer", Spy)
    monkeypatch.setattr(training, "RefinerTrainer", Spy)
    ph = phantom.generate(
        3,
        {"shape": [24, 20, 32], "spacing_mm": [8.0] * 3, "first_level": "T12", "last_level": "L4"},
    )
    item = {"case": "own", "ct": ph.image("hu"), "centroids": ph.centroids}
    cfg = {
        "levels": "T10-L5",
        "refiner": {"steps": 1},
        "regions": {"steps": 1},
        "synthetic": {"regions_cases": 2, "population": POP},
    }
    trainer = LocaliserTrainer([item], [], tmp_path, cfg, seed=5, device="cpu", threads=1)
    trainer.setup()
    assert [c.name for c in trainer.train] == ["own"]
    seen = {stage: trainer.fit_stage(stage)[stage] for stage in ("refiner", "regions")}
    assert seen["refiner"] == ["own"]
    assert seen["regions"] == ["own", *(f"synthetic{s}" for s in synthetic_seeds(5, 2))]
