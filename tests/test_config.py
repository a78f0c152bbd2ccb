"""Typed configs: unknown keys and bad values fail by name, and the JSON schema lists the same keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ctseg.core.config import CubeRecipe, ExperimentConfig
from ctseg.core.errors import ConfigError
from ctseg.core.tasks import TASKS, get_task

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())


def schema_item(section: str) -> dict:
    return SCHEMA["properties"][section]["additionalProperties"]


@pytest.mark.parametrize(
    ("section", "cls", "aliases"),
    [("experiments", ExperimentConfig, {"base_channels"}), ("cubes", CubeRecipe, set())],
)
def test_schema_lists_exactly_the_dataclass_keys(section, cls, aliases):
    item = schema_item(section)
    assert item["additionalProperties"] is False
    fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
    assert set(item["properties"]) == fields | aliases


def test_schema_enums_agree_with_the_task_registry():
    assert set(schema_item("experiments")["properties"]["task"]["enum"]) == set(TASKS)
    cube_tasks = {t for t, spec in TASKS.items() if spec.uses_cube}
    assert set(schema_item("cubes")["properties"]["task"]["enum"]) == cube_tasks


def test_every_shipped_config_parses():
    for name in ("config.yaml", "config.gpu.yaml", "tests/configs/tiny.yaml"):
        cfg = yaml.safe_load((REPO / name).read_text())
        for exp, d in cfg.get("experiments", {}).items():
            ExperimentConfig.from_dict(d, exp)
        for cube, d in cfg.get("cubes", {}).items():
            CubeRecipe.from_dict(d, cube)


def test_unknown_key_names_the_key_and_the_experiment():
    with pytest.raises(ConfigError, match=r"experiment vert3d: unknown key\(s\) 'epocs'"):
        ExperimentConfig.from_dict({"task": "vertebrae", "epocs": 3}, "vert3d")
    with pytest.raises(ConfigError, match=r"cube vert: unknown key\(s\) 'copie'"):
        CubeRecipe.from_dict({"task": "vertebrae", "copie": 3}, "vert")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("depth", 1, "depth: must be at least 2"),
        ("epochs", "ten", "epochs: expected an integer"),
        ("lr", -1.0, "lr: must be > 0"),
        ("model", "vnet", "model: must be one of"),
        ("slice_axis", "oblique", "slice_axis"),
        ("pos_slice_prob", 1.5, "pos_slice_prob"),
        ("tta_flip", "yes", "tta_flip: expected true or false"),
        ("task", "lungs", "unknown task 'lungs'"),
        ("classes", "instances", "classes: must be levels or foreground"),
        ("classes", "foreground", "classes: foreground needs identify_with"),
    ],
)
def test_bad_values_fail_naming_experiment_and_key(key, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        ExperimentConfig.from_dict({"task": "vertebrae", key: value}, "e1")
    assert "e1" in str(info.value)


def test_a_3d_model_does_not_fit_the_drr_task():
    with pytest.raises(ConfigError, match="does not fit task 'bone_drr'"):
        ExperimentConfig.from_dict({"task": "bone_drr", "model": "unet3d"}, "d")


def test_defaults_live_in_one_place():
    e3 = ExperimentConfig.from_dict({"model": "unet3d"}, "a")
    e2 = ExperimentConfig.from_dict({"model": "unet2d"}, "b")
    assert (e3.batch, e2.batch) == (2, 8)
    assert ExperimentConfig.from_dict({"optimizer": "adamw"}).learning_rate == 1e-3
    assert ExperimentConfig.from_dict({"optimizer": "sgd"}).learning_rate == 0.01
    assert ExperimentConfig.from_dict({"base_channels": 8}).base_width == 8
    with pytest.raises(ConfigError, match="not both"):
        ExperimentConfig.from_dict({"base_channels": 8, "base_width": 8})


def test_cube_recipe_checks():
    with pytest.raises(ConfigError, match="hu_window"):
        CubeRecipe.from_dict({"hu_window": [100, -100]}, "c")
    with pytest.raises(ConfigError, match="does not train from cubes"):
        CubeRecipe.from_dict({"task": "bone_drr"}, "c")
    assert get_task("metal").truth_key == "metal"
