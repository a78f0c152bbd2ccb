"""Case-sheet rows to phantom parameters: fixed cohort, population draws and named families."""

from __future__ import annotations

import pytest

from ctseg.core.errors import ConfigError
from ctseg.phantom.population import case_params

POP = {"levels": ["C1", "L5"], "min_spacing_mm": [3.0, 3.0, 3.0], "max_voxels": 400000}


def test_fixed_cohort_keeps_its_keys_and_per_case_implants():
    cfg = {"shape": [96, 80, 112], "noise_hu": 20.0, "implants": {"ph01": ["L3", "L4"]}}
    assert case_params(cfg, "ph01", 101)["implants"] == ["L3", "L4"]
    assert case_params(cfg, "ph02", 102) == {
        "shape": [96, 80, 112],
        "noise_hu": 20.0,
        "implants": [],
    }


def test_population_draw_is_deterministic_per_seed_and_differs_between_seeds():
    cfg = {"population": POP}
    a, b, c = case_params(cfg, "x", 7), case_params(cfg, "y", 7), case_params(cfg, "x", 8)
    assert a == b and a != c
    assert a["fit"] is False


def test_a_family_overrides_population_ranges():
    cfg = {
        "population": POP,
        "families": {
            "pil": {"orientations": ["PIL"]},
            "small": {"body_scale": [0.75, 0.75]},
            "lower": {"levels": ["T10", "S"], "min_levels": 5},
        },
    }
    for seed in range(5):
        assert case_params(cfg, "c", seed, "pil")["orientation"] == "PIL"
        assert case_params(cfg, "c", seed, "small")["body_scale"] == pytest.approx(0.75)
        low = case_params(cfg, "c", seed, "lower")
        assert low["first_level"] in {"T10", "T11", "T12", "L1", "L2"}


def test_unknown_family_and_stray_keys_are_errors_naming_them():
    with pytest.raises(ConfigError, match="unknown family 'tiny'"):
        case_params({"population": POP, "families": {"pil": {}}}, "c", 1, "tiny")
    with pytest.raises(ConfigError, match="family 'pil' needs phantom.population"):
        case_params({"noise_hu": 20.0}, "c", 1, "pil")
    with pytest.raises(ConfigError, match="not noise_hu"):
        case_params({"population": POP, "noise_hu": 20.0}, "c", 1)
    with pytest.raises(ConfigError, match="body_scale"):
        case_params({"population": {**POP, "body_scale": [1.3, 0.75]}}, "c", 1)
