"""The phantom population sampler: configured ranges, determinism per seed, validation."""

from __future__ import annotations

import numpy as np
import pytest

from ctseg.core.errors import ConfigError
from ctseg.core.labels import VERSE_NAMES
from ctseg.phantom import ORIENTATIONS, PhantomParams, PopulationParams, generate, sample_case
from ctseg.phantom.params import spine_ids

CONFIG = {
    "levels": ["C1", "L5"],
    "body_scale": [0.75, 1.3],
    "spacing_inplane_mm": [0.8, 4.0],
    "spacing_slice_mm": [1.0, 5.0],
    "noise_hu": [10, 80],
    "blur_mm": [0.2, 1.2],
    "scoliosis_mm": [-30, 30],
    "kyphosis_mm": [10, 45],
    "lordosis_mm": [5, 35],
    "implant_rate": 0.3,
    "transitional_rate": 0.3,
}
N = 300


@pytest.fixture(scope="module")
def cases() -> list[PhantomParams]:
    pop = PopulationParams.from_dict(CONFIG)
    return [sample_case(pop, 1000 + i) for i in range(N)]


def test_draws_stay_in_the_configured_ranges(cases):
    for p in cases:
        assert 0.75 <= p.body_scale <= 1.3
        assert p.spacing_mm[0] == p.spacing_mm[1] and 0.8 <= p.spacing_mm[0] <= 4.0
        assert 1.0 <= p.spacing_mm[2] <= 5.0
        assert 10 <= p.noise_hu <= 80 and 0.2 <= p.blur_mm <= 1.2
        assert -30 <= p.scoliosis_mm <= 30 and 10 <= p.kyphosis_mm <= 45
        assert 5 <= p.lordosis_mm <= 35
        assert p.orientation in ORIENTATIONS and not p.fit
        run = p.levels
        seq = spine_ids(p.transitional)
        assert run == seq[seq.index(run[0]) : seq.index(run[-1]) + 1]  # consecutive
        assert len(run) >= 5 and 26 not in run  # the pool stops at L5 (or L6 below it)
        assert set(p.implants) <= {VERSE_NAMES[k] for k in run}
        assert not set(p.implants) & {"C1", "C2"}


def test_draws_cover_the_ranges(cases):
    """Uniform draws: the extremes are approached, most fields of view are partial."""
    scales = np.array([p.body_scale for p in cases])
    assert scales.min() < 0.8 and scales.max() > 1.25
    lengths = np.array([len(p.levels) for p in cases])
    pool = 24
    assert lengths.min() == 5 and lengths.max() >= pool - 1
    assert np.mean(lengths < pool) > 0.9  # most cases show part of the spine
    assert len({p.orientation for p in cases}) >= 44
    assert 0.2 < np.mean([p.transitional != "none" for p in cases]) < 0.4
    assert {p.transitional for p in cases} == {"none", "L6", "T13", "T12_no_ribs"}
    assert 0.2 < np.mean([bool(p.implants) for p in cases]) < 0.4
    starts = {p.first_level for p in cases}
    assert {"C1", "T1", "L1"} <= starts


def test_deterministic_per_seed():
    pop = PopulationParams.from_dict(CONFIG)
    a, b, c = sample_case(pop, 7), sample_case(CONFIG, 7), sample_case(pop, 8)
    assert a == b and a.to_dict() == b.to_dict()
    assert a != c
    assert PhantomParams.from_dict(a.to_dict()) == a  # a case's params survive YAML / JSON


def test_max_voxels_and_coarsest_grid():
    pop = PopulationParams.from_dict({**CONFIG, "max_voxels": 400_000})
    for s in range(40):
        p = sample_case(pop, s)
        assert np.prod(p.shape) <= 400_000
    pop = PopulationParams.from_dict({**CONFIG, "min_spacing_mm": [3.0, 3.0, 4.0]})
    for s in range(40):
        p = sample_case(pop, s)
        assert p.spacing_mm[0] >= 3.0 and p.spacing_mm[2] >= 4.0


def test_sampled_cases_show_their_run():
    """End to end on coarse grids: the generator sees exactly the drawn run of levels."""
    pop = PopulationParams.from_dict({**CONFIG, "levels": ["C1", "S"], "min_spacing_mm": [5, 5, 5]})
    for seed in range(6):
        p = sample_case(pop, seed)
        ph = generate(seed, p, progress=False)
        assert ph.info["visible"] == [VERSE_NAMES[k] for k in p.levels], seed
        assert [c["label"] for c in ph.centroids] == sorted(p.levels)
        assert ph.info["orientation"] == p.orientation


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("body_scale", [1.3, 0.75], "body_scale.*inverted"),
        ("spacing_slice_mm", [], "spacing_slice_mm.*empty"),
        ("noise_hu", [10], "noise_hu"),
        ("blur_mm", ["a", 1], "blur_mm"),
        ("spacing_inplane_mm", [0.0, 2.0], "spacing_inplane_mm.*limits"),
        ("levels", ["L5", "C1"], "levels"),
        ("levels", ["C1", "X9"], "levels"),
        ("min_levels", 40, "min_levels"),
        ("implant_rate", 1.5, "implant_rate"),
        ("orientations", ["LPS", "XYZ"], "orientations"),
        ("transitional_kinds", ["L7"], "transitional_kinds"),
        ("colour", 3, "colour"),
    ],
)
def test_bad_config_names_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        PopulationParams.from_dict({**CONFIG, key: value})


def test_fixed_values_and_restricted_choices():
    pop = PopulationParams.from_dict(
        {
            **CONFIG,
            "body_scale": [1.0, 1.0],
            "orientations": ["pir", "RAS"],
            "transitional_rate": 0.0,
            "min_levels": 17,
            "max_levels": 17,
            "levels": ["T1", "L5"],
        }
    )
    for s in range(20):
        p = sample_case(pop, s)
        assert p.body_scale == 1.0 and p.orientation in {"PIR", "RAS"}
        assert p.transitional == "none" and (p.first_level, p.last_level) == ("T1", "L5")
