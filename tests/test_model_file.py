"""load_package on untrusted model.pt files: refused with one message naming the file."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ctseg.core.errors import InputError
from ctseg.inference.package import load_package, make_plan, save_package
from ctseg.models import build_model

EXP = {"task": "vertebrae", "model": "unet3d", "base_width": 4, "depth": 2, "labels": [8]}
META = {
    "task": "vertebrae",
    "dim": 3,
    "n_classes": 2,
    "class_ids": [0, 8],
    "spacing_mm": [4.0, 4.0, 4.0],
    "patch": [8, 8, 8],
    "hu_window": [-1000, 2000],
    "model_kwargs": {"model": "unet3d", "base_width": 4, "depth": 2, "norm": "instance"},
}


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _refused(path, *fragments):
    with pytest.raises(InputError) as e:
        load_package(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "weights_only" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_good_model_loads(tmp_path):
    path = tmp_path / "model.pt"
    save_package(path, build_model(EXP, 2), EXP, make_plan(META, EXP))
    model, meta = load_package(path)
    assert meta["class_ids"] == [0, 8]


def test_pickle_calling_posix_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"state_dict": _Evil(marker), "meta_json": "{}", "experiment_json": "{}"}, path)
    msg = _refused(path, "unsafe or foreign pickle refused")
    assert "system" in msg
    assert not marker.exists()


def test_missing_keys(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {}}, path)
    _refused(path, "expected keys", "meta_json")


def test_meta_lacking_task(tmp_path):
    path = tmp_path / "model.pt"
    meta = {k: v for k, v in META.items() if k != "task"}
    save_package(path, build_model(EXP, 2), EXP, make_plan(meta, EXP))
    _refused(path, "invalid metadata", "task")


def test_huge_architecture_is_not_allocated(tmp_path):
    """Metadata asking for a network of ~10^12 parameters: compared on the meta device,
    refused without allocating it."""
    path = tmp_path / "model.pt"
    save_package(path, build_model(EXP, 2), EXP, make_plan(META, EXP))
    blob = torch.load(path, weights_only=True)
    meta = json.loads(blob["meta_json"])
    meta["model_kwargs"]["base_width"] = 200_000
    blob["meta_json"] = json.dumps(meta)
    torch.save(blob, path)
    _refused(path, "base_width=200000 outside the supported range")


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"this is not a model")
    _refused(path, "cannot read it as a torch file")


def test_folder_and_missing(tmp_path):
    _refused(tmp_path, "model package not found")
    _refused(tmp_path / "nope.pt", "not found")
