"""Training: class mapping, sampling plan, overfitting a tiny case, kill -9 resume, outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ctseg.cubes import build_cube
from ctseg.predict import load_model, predict_case
from ctseg.train import CubeSource, class_ids_for, ids_to_classes, train_experiment

REPO = Path(__file__).resolve().parents[1]


def write_box_case(d: Path, name: str, shape_zyx=(32, 16, 16), ids=(8, 9, 10), seed=0) -> dict:
    """Synthetic case: labelled bright boxes stacked along z in a soft-tissue block (2 mm)."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    hu = np.full(shape_zyx, -1000, np.int16)
    lab = np.zeros(shape_zyx, np.uint8)
    z, y, x = shape_zyx
    hu[:, 2:-2, 2:-2] = 0
    h = z // (len(ids) + 1)
    # identity direction: array z grows towards the head, so the first (most cranial) id is
    # placed at the top, as in a real spine
    for k, i in enumerate(reversed(ids)):
        z0 = h // 2 + k * h
        sl = (
            slice(z0 + 1, z0 + h - 1),
            slice(y // 2 - 4, y // 2 + 4),
            slice(x // 2 - 4, x // 2 + 4),
        )
        hu[sl] = 600 + 300 * k
        lab[sl] = i
    hu = (hu + rng.normal(0, 20, hu.shape)).astype(np.int16)
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((2.0, 2.0, 2.0))
    lb = sitk.GetImageFromArray(lab)
    lb.CopyInformation(ct)
    mt = sitk.GetImageFromArray((lab == ids[-1]).astype(np.uint8))
    mt.CopyInformation(ct)
    item = {
        "case": name,
        "ct": str(d / f"{name}_ct.nii.gz"),
        "labels": str(d / f"{name}_labels.nii.gz"),
        "metal": str(d / f"{name}_metal.nii.gz"),
    }
    sitk.WriteImage(ct, item["ct"])
    sitk.WriteImage(lb, item["labels"])
    sitk.WriteImage(mt, item["metal"])
    return item


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    case = write_box_case(d, "a")
    cube = d / "cube.h5"
    build_cube(
        [case],
        cube,
        {"task": "vertebrae", "spacing_mm": [2, 2, 2], "patch": [16, 16, 32], "copies": 0},
        seed=0,
    )
    metal_cube = d / "metal.h5"
    build_cube(
        [case],
        metal_cube,
        {"task": "metal", "spacing_mm": [2, 2, 2], "patch": [16, 16, 32], "copies": 1},
        seed=0,
    )
    return {"case": case, "cube": cube, "metal_cube": metal_cube}


EXP = {
    "task": "vertebrae",
    "model": "unet3d",
    "base_width": 8,
    "depth": 3,
    "labels": [8, 9, 10],
    "batch_size": 1,
    "optimizer": "adamw",
    "lr": 0.01,
    "threads": 1,
}


def test_class_mapping():
    assert class_ids_for({"task": "vertebrae"}) == [0, *range(8, 25)]
    assert class_ids_for({"task": "metal"}) == [0, 1]
    lab = np.array([0, 8, 9, 10, 20, 255], np.uint8)
    assert ids_to_classes(lab, [0, 8, 9, 10]).tolist() == [0, 1, 2, 3, 0, 0]
    with pytest.raises(ValueError):
        class_ids_for({"task": "vertebrae", "labels": [8, 8]})


def test_slice_plan_positive_sampling(tiny):
    src = CubeSource(tiny["metal_cube"], [0, 1], dim=2)
    gen = torch.Generator().manual_seed(0)
    plan = src.plan_epoch(gen, steps=10, batch=4, pos_prob=1.0)
    assert len(plan) == 10 and all(len(b) == 4 for b in plan)
    for batch in plan:
        x, y = src.load(batch)
        assert x.shape == (4, 1, 16, 16) and (y.flatten(1).max(1).values == 1).all()
    gen2 = torch.Generator().manual_seed(0)
    assert src.plan_epoch(gen2, steps=10, batch=4, pos_prob=1.0) == plan
    src.close()


def test_overfit_single_case_reaches_dice_09(tiny, tmp_path):
    out = tmp_path / "m"
    train_experiment(
        {**EXP, "epochs": 30, "steps_per_epoch": 2},
        {"cube": str(tiny["cube"])},
        {"cases": [tiny["case"]]},
        out,
        seed=1,
        device="cpu",
    )
    rows = [r.split("\t") for r in (out / "history.tsv").read_text().splitlines()]
    assert rows[0] == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_dice",
        "lr",
        "seconds",
        "data_wait_fraction",
    ]
    assert len(rows) == 31
    dice = [float(r[3]) for r in rows[1:]]
    loss = [float(r[1]) for r in rows[1:]]
    print("val dice per epoch", dice)
    assert dice[-1] > 0.9, dice
    assert loss[-1] < 0.5 * loss[0]
    assert float(rows[-1][4]) == 0.0  # poly decay ends at zero
    assert all(0.0 <= float(r[6]) <= 1.0 for r in rows[1:])
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    blob = torch.load(out / "model.pt", weights_only=True)
    meta = json.loads(blob["meta_json"])
    assert (
        meta["class_ids"] == [0, 8, 9, 10]
        and meta["spacing_mm"] == [2, 2, 2]
        and meta["patch"] == [16, 16, 32]
    )
    # predict with the trained model: the case comes back with its VerSe ids
    pred_path = tmp_path / "pred.nii.gz"
    predict_case(out / "model.pt", {"ct": tiny["case"]["ct"]}, pred_path, device="cpu")
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_path)))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(tiny["case"]["labels"]))
    for lid in (8, 9, 10):
        p, t = pred == lid, truth == lid
        assert 2 * (p & t).sum() / (p.sum() + t.sum()) > 0.85


def test_2d_model_on_cube_slices_and_metal_task(tiny, tmp_path):
    exp = {
        "task": "metal",
        "model": "unet2d",
        "base_width": 4,
        "depth": 3,
        "epochs": 2,
        "steps_per_epoch": 2,
        "batch_size": 4,
        "threads": 1,
    }
    out = tmp_path / "m2"
    train_experiment(
        exp, {"cube": str(tiny["metal_cube"])}, {"cases": [tiny["case"]]}, out, seed=0, device="cpu"
    )
    model, meta = load_model(out / "model.pt")
    assert meta["dim"] == 2 and meta["class_ids"] == [0, 1]
    assert (out / "checkpoints" / "last.pt").is_file()
    pred_path = tmp_path / "metal.nii.gz"
    predict_case(out / "model.pt", {"ct": tiny["case"]["ct"]}, pred_path, device="cpu")
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(pred_path)))).tolist()) <= {0, 1}


def test_cube_task_mismatch_is_rejected(tiny, tmp_path):
    from ctseg.errors import InputError

    with pytest.raises(InputError, match="does not match"):
        train_experiment(
            {**EXP, "epochs": 1},
            {"cube": str(tiny["metal_cube"])},
            {"cases": []},
            tmp_path / "x",
            seed=0,
            device="cpu",
        )


DRIVER = """
import json, sys
from pathlib import Path
from ctseg.train import train_experiment
exp, cube, case, out = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
train_experiment(exp, {"cube": cube}, {"cases": [case]}, out, seed=5, device="cpu")
"""


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_kill9_then_rerun_resumes_and_matches_uninterrupted_run(tiny, tmp_path, capsys):
    exp = {
        **EXP,
        "base_width": 4,
        "epochs": 6,
        "steps_per_epoch": 3,
        "optimizer": "sgd",
        "lr": 0.01,
    }
    train_data, val_data = {"cube": str(tiny["cube"])}, {"cases": [tiny["case"]]}
    # killed run (a subprocess): SIGKILL as soon as the first checkpoint appears
    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / "last.pt"
    proc = _run([json.dumps(exp), str(tiny["cube"]), json.dumps(tiny["case"]), str(out)])
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.pt").exists()
    epoch_at_kill = torch.load(ckpt, weights_only=False)["epoch"]
    assert 1 <= epoch_at_kill < 6
    # the rerun resumes from the checkpoint and finishes
    capsys.readouterr()
    train_experiment(exp, train_data, val_data, out, seed=5, device="cpu")
    log = capsys.readouterr().out
    assert f"resuming killed from epoch {epoch_at_kill}" in log
    assert "epoch 1/6 loss" not in log  # epoch 1 was not trained again
    assert "epoch 6/6 loss" in log
    assert (out / "model.pt").is_file()
    final = torch.load(ckpt, weights_only=False)
    assert final["epoch"] == 6
    # uninterrupted reference run
    train_experiment(exp, train_data, val_data, tmp_path / "ref", seed=5, device="cpu")
    ref_ck = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=False)
    # optimizer state continued: SGD momentum buffers match the uninterrupted run
    for a, b in zip(
        final["optimizer"]["state"].values(), ref_ck["optimizer"]["state"].values(), strict=True
    ):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=1e-4, atol=1e-6)
    for k, v in ref_ck["model"].items():
        torch.testing.assert_close(final["model"][k], v, rtol=1e-4, atol=1e-6)
    h_ref = [(h["epoch"], h["train_loss"], h["val_dice"]) for h in ref_ck["history"]]
    h_got = [(h["epoch"], h["train_loss"], h["val_dice"]) for h in final["history"]]
    assert [h[0] for h in h_got] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(np.array(h_got), np.array(h_ref), rtol=1e-5)


def write_drr_views(d: Path, name: str, n_views: int = 2, seed: int = 0) -> dict:
    """2D 'DRRs': a smooth background with a bright vertical bar (the 'spine') labelled bone."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    drr, lab = [], []
    for v in range(n_views):
        img = rng.normal(1.0, 0.05, (30, 26)).astype(np.float32)
        mask = np.zeros((30, 26), np.uint8)
        x0 = 8 + 3 * v
        img[:, x0 : x0 + 6] += 3.0
        mask[:, x0 : x0 + 6] = 20  # projected VerSe ids: bone = label > 0
        for arr, lst, kind in ((img, drr, "drr"), (mask, lab, "lab")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((3.2, 3.2))
            p = d / f"{name}_{v}_{kind}.nii.gz"
            sitk.WriteImage(im, str(p))
            lst.append(str(p))
    return {"case": name, "drr": drr, "drr_labels": lab}


def test_bone_drr_training_and_stacked_prediction(tmp_path):
    pytest.importorskip("ctseg.preprocess")
    cases = [write_drr_views(tmp_path / "d", f"c{i}", seed=i) for i in range(2)]
    exp = {
        "task": "bone_drr",
        "model": "unet2d",
        "preprocess": "none",
        "base_width": 4,
        "depth": 3,
        "epochs": 25,
        "batch_size": 2,
        "optimizer": "adamw",
        "lr": 0.01,
        "threads": 1,
    }
    out = tmp_path / "m"
    train_experiment(exp, {"cases": cases}, {"cases": cases[1:]}, out, seed=0, device="cpu")
    rows = [r.split("\t") for r in (out / "history.tsv").read_text().splitlines()]
    assert float(rows[-1][3]) > 0.9  # the bar is trivially separable
    pred_path = tmp_path / "stack.nii.gz"
    predict_case(out / "model.pt", {"drr": cases[1]["drr"]}, pred_path, device="cpu")
    pred = sitk.ReadImage(str(pred_path))
    assert pred.GetSize() == (26, 30, 2)
    np.testing.assert_allclose(pred.GetSpacing(), (3.2, 3.2, 1.0))
    arr = sitk.GetArrayFromImage(pred)
    truth = np.stack(
        [sitk.GetArrayFromImage(sitk.ReadImage(p)) > 0 for p in cases[1]["drr_labels"]]
    )
    assert 2 * (arr.astype(bool) & truth).sum() / (arr.sum() + truth.sum()) > 0.9
    from ctseg.drr import stack_views

    truth_stack = tmp_path / "truth.nii.gz"
    stack_views([Path(p) for p in cases[1]["drr_labels"]], truth_stack)
    t = sitk.ReadImage(str(truth_stack))
    assert (
        t.GetSize() == pred.GetSize()
        and t.GetOrigin() == pred.GetOrigin()
        and t.GetSpacing() == pred.GetSpacing()
    )
