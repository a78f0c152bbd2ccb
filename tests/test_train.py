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

from ctseg.core.config import ExperimentConfig
from ctseg.core.errors import ConfigError
from ctseg.inference.package import load_package
from ctseg.inference.predict import predict_case
from ctseg.training.cubes import build_cube
from ctseg.training.data import CubeSource, ids_to_classes, load_batches
from ctseg.training.precision import cpu_has_bf16
from ctseg.training.train import train_experiment
from ctseg.training.trainer import Trainer

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


def class_ids_for(d: dict) -> list[int]:
    return ExperimentConfig.from_dict({"cube": "c", **d}, "x").class_ids


def test_class_mapping():
    assert class_ids_for({"task": "vertebrae"}) == [0, *range(8, 25)]
    assert class_ids_for({"task": "metal"}) == [0, 1]
    lab = np.array([0, 8, 9, 10, 20, 255], np.uint8)
    assert ids_to_classes(lab, [0, 8, 9, 10]).tolist() == [0, 1, 2, 3, 0, 0]
    with pytest.raises(ConfigError, match="labels"):
        class_ids_for({"task": "vertebrae", "labels": [8, 8]})
    # a vertebra-foreground model: every level is class 1, levels come from the localiser
    fg = ExperimentConfig.from_dict(
        {"cube": "c", "classes": "foreground", "identify_with": "loc"}, "x"
    )
    assert fg.class_ids == [0, 1] and fg.merge_foreground
    assert ids_to_classes(lab, fg.class_ids, fg.merge_foreground).tolist() == [0, 1, 1, 1, 1, 1]


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


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_cpu_bf16_training_runs_the_forward_pass_in_bf16_and_still_fits(tiny, tmp_path):
    exp = ExperimentConfig.from_dict({**EXP, "cpu_bf16": True, "epochs": 30, "steps_per_epoch": 2})
    trainer = Trainer(exp, {}, {}, tmp_path / "t", seed=1, device=torch.device("cpu"))
    conv = torch.nn.Conv3d(1, 1, 3)
    with trainer.autocast():
        assert conv(torch.randn(1, 1, 4, 4, 4)).dtype == torch.bfloat16
    plain = Trainer(
        ExperimentConfig.from_dict(EXP), {}, {}, tmp_path / "p", seed=1, device=torch.device("cpu")
    )
    with plain.autocast():
        assert conv(torch.randn(1, 1, 4, 4, 4)).dtype == torch.float32
    out = tmp_path / "m"
    train_experiment(
        exp, {"cube": str(tiny["cube"])}, {"cases": [tiny["case"]]}, out, seed=1, device="cpu"
    )
    dice = [float(r.split("\t")[3]) for r in (out / "history.tsv").read_text().splitlines()[1:]]
    assert dice[-1] > 0.9, dice
    blob = torch.load(out / "model.pt", weights_only=True)
    assert json.loads(blob["experiment_json"])["cpu_bf16"] is True


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_cpu_bf16_refuses_a_patch_that_puts_a_level_two_voxels_deep(tiny, tmp_path):
    """The tiny cube's patch is 32 deep: at depth 5 (4 poolings) its bottom level is 2 deep,
    where oneDNN's bf16 weight gradient reads uninitialised memory; float32 trains it."""
    bad = ExperimentConfig.from_dict({**EXP, "name": "deep", "depth": 5, "cpu_bf16": True})
    with pytest.raises(ConfigError, match="experiment deep: a training patch 32 voxels deep"):
        train_experiment(bad, {"cube": str(tiny["cube"])}, {}, tmp_path / "b", seed=1, device="cpu")
    assert not (tmp_path / "b" / "model.pt").exists()
    ok = ExperimentConfig.from_dict({**EXP, "depth": 5, "epochs": 1, "steps_per_epoch": 1})
    train_experiment(ok, {"cube": str(tiny["cube"])}, {}, tmp_path / "f", seed=1, device="cpu")
    assert (tmp_path / "f" / "model.pt").exists()


def test_channels_last_training_takes_the_same_steps(tiny, tmp_path):
    """A layout, not a recipe: float32 training with the network and its batches
    channels-last follows the NCDHW run's losses (up to the order of floating-point sums),
    and the package records the setting."""
    base = {**EXP, "epochs": 2, "steps_per_epoch": 3}
    losses = {}
    for cl in (False, True):
        out = tmp_path / f"cl{int(cl)}"
        exp = ExperimentConfig.from_dict({**base, "channels_last": cl})
        train_experiment(
            exp, {"cube": str(tiny["cube"])}, {"cases": [tiny["case"]]}, out, seed=1, device="cpu"
        )
        rows = (out / "history.tsv").read_text().splitlines()[1:]
        losses[cl] = [float(r.split("\t")[1]) for r in rows]
    assert len(losses[True]) == 2
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-3)
    blob = torch.load(tmp_path / "cl1" / "model.pt", weights_only=True)
    assert json.loads(blob["experiment_json"])["channels_last"] is True


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
    model, meta = load_package(out / "model.pt")
    assert meta["dim"] == 2 and meta["class_ids"] == [0, 1]
    assert (out / "checkpoints" / "last.pt").is_file()
    pred_path = tmp_path / "metal.nii.gz"
    predict_case(out / "model.pt", {"ct": tiny["case"]["ct"]}, pred_path, device="cpu")
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(pred_path)))).tolist()) <= {0, 1}


def test_cube_task_mismatch_is_rejected(tiny, tmp_path):
    from ctseg.core.errors import InputError

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
from ctseg.training.train import train_experiment
exp, cube, case, out = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
train_experiment(exp, {"cube": cube}, {"cases": [case]}, out, seed=5, device="cpu")
"""


def _run(args, script: Path | None = None, **kw):
    """Run DRIVER with ``python -c``, or as the unguarded script file ``script`` (how Snakemake's
    ``script:`` rules run scripts/train.py)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if script is not None:
        script.write_text(DRIVER)
    return subprocess.Popen(
        [sys.executable, *(["-c", DRIVER] if script is None else [str(script)]), *args],
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
    epoch_at_kill = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= epoch_at_kill < 6
    # the rerun resumes from the checkpoint and finishes
    capsys.readouterr()
    train_experiment(exp, train_data, val_data, out, seed=5, device="cpu")
    log = capsys.readouterr().out
    assert f"resuming killed from epoch {epoch_at_kill}" in log
    assert "epoch 1/6 loss" not in log  # epoch 1 was not trained again
    assert "epoch 6/6 loss" in log
    assert (out / "model.pt").is_file()
    final = torch.load(ckpt, weights_only=True)
    assert final["epoch"] == 6
    # uninterrupted reference run
    train_experiment(exp, train_data, val_data, tmp_path / "ref", seed=5, device="cpu")
    ref_ck = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
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


def test_checkpoint_rng_states_round_trip_with_weights_only(tmp_path):
    """RNG states survive torch.save -> torch.load(weights_only=True) and continue the streams."""
    import random

    from ctseg.training.checkpoint import restore_rng_states, rng_states

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.normal()  # a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in python's
    gen = torch.Generator().manual_seed(4)
    torch.save({"rng": rng_states(gen)}, tmp_path / "r.pt")
    expected = (
        torch.rand(3),
        np.random.normal(size=3),
        [random.random(), random.gauss(0, 1)],
        torch.rand(3, generator=gen),
    )
    torch.manual_seed(0), np.random.seed(0), random.seed(0), gen.manual_seed(0)
    restore_rng_states(torch.load(tmp_path / "r.pt", weights_only=True)["rng"], gen)
    got = (
        torch.rand(3),
        np.random.normal(size=3),
        [random.random(), random.gauss(0, 1)],
        torch.rand(3, generator=gen),
    )
    torch.testing.assert_close(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2]
    torch.testing.assert_close(got[3], expected[3])


def test_shard_plan_is_disjoint_and_covers_each_batch():
    from ctseg.training.distributed import shard_plan

    plan = [[(0, -1), (1, -1), (2, -1), (3, -1)], [(4, 5), (6, 7), (8, 9), (1, 2)]]
    shards = [shard_plan(plan, r, 2) for r in range(2)]
    assert shards[0] == [[(0, -1), (1, -1)], [(4, 5), (6, 7)]]
    assert shards[1] == [[(2, -1), (3, -1)], [(8, 9), (1, 2)]]
    with pytest.raises(ValueError, match="divisible"):
        shard_plan(plan, 0, 3)


def test_global_batch_loss_equals_dice_ce_on_one_rank():
    """World size 1: GlobalBatchDiceCELoss has DiceCELoss's value and gradient."""
    from ctseg.training.distributed import GlobalBatchDiceCELoss
    from ctseg.training.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 5, 3, generator=g, requires_grad=True)
    target = torch.randint(4, (2, 6, 5, 3), generator=g)
    ref = DiceCELoss(0.5, 0.5)(logits, target)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    bwd, value = GlobalBatchDiceCELoss(0.5, 0.5, 1)(logits, target)
    (grad,) = torch.autograd.grad(bwd, logits)
    torch.testing.assert_close(value, ref.detach())
    torch.testing.assert_close(grad, ref_grad)


def test_ddp_two_gloo_ranks_match_single_process_training(tiny, tmp_path, capsys):
    """world_size=2 on CPU runs the real torch.distributed path (2 spawned processes, gloo,
    DistributedDataParallel, sharded batches, all-reduced Dice sums) and must end where a
    single-process run with the same batch ends; its checkpoint then resumes single-process."""
    exp = {
        **EXP,
        "base_width": 4,
        "batch_size": 2,
        "epochs": 2,
        "steps_per_epoch": 2,
        "optimizer": "sgd",
        "val_every": 2,
    }
    train_data, val_data = {"cube": str(tiny["cube"])}, {"cases": [tiny["case"]]}
    t0 = time.perf_counter()
    train_experiment(exp, train_data, val_data, tmp_path / "single", seed=7, device="cpu")
    t1 = time.perf_counter()
    ddp_out = tmp_path / "ddp"
    train_experiment({**exp, "world_size": 2}, train_data, val_data, ddp_out, seed=7, device="cpu")
    t2 = time.perf_counter()
    print(f"single {t1 - t0:.1f} s, ddp x2 {t2 - t1:.1f} s")
    ref = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)
    got = torch.load(ddp_out / "checkpoints" / "last.pt", weights_only=True)
    assert got["epoch"] == ref["epoch"] == 2
    # same number of optimizer steps (SGD state and scheduler count) as the single run
    assert got["scheduler"]["last_epoch"] == ref["scheduler"]["last_epoch"] == 4
    assert set(got["model"]) == set(ref["model"])  # unwrapped names, no "module." prefix
    for k, v in ref["model"].items():
        torch.testing.assert_close(got["model"][k], v, rtol=1e-5, atol=1e-7)
    for a, b in zip(
        got["optimizer"]["state"].values(), ref["optimizer"]["state"].values(), strict=True
    ):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=1e-5, atol=1e-7)
    rows = (ddp_out / "history.tsv").read_text().splitlines()
    assert len(rows) == 3
    np.testing.assert_allclose(
        [[h["train_loss"], h["lr"]] for h in got["history"]],
        [[h["train_loss"], h["lr"]] for h in ref["history"]],
        rtol=1e-5,
    )
    assert got["history"][-1]["val_dice"] == pytest.approx(ref["history"][-1]["val_dice"], 1e-5)
    model, meta = load_package(ddp_out / "model.pt")
    blob = torch.load(ddp_out / "model.pt", weights_only=True)
    assert json.loads(blob["experiment_json"])["world_size"] == 2
    for k, v in ref["model"].items():
        torch.testing.assert_close(blob["state_dict"][k], v, rtol=1e-5, atol=1e-7)
    # the world size is not part of the run identity: a single-process rerun resumes the DDP run
    capsys.readouterr()
    train_experiment(exp, train_data, val_data, ddp_out, seed=7, device="cpu")
    log = capsys.readouterr().out
    assert "resuming ddp from epoch 2" in log and "epoch 1/2 loss" not in log


def test_ddp_kill9_takes_the_ranks_down_and_resumes_exactly(tiny, tmp_path, capsys):
    """kill -9 of a 2-rank gloo job's launcher also ends its ranks (nothing writes on), and a
    2-rank rerun resumes from the weights_only checkpoint and ends where an uninterrupted
    single-process run ends."""
    exp = {
        **EXP,
        "base_width": 4,
        "batch_size": 2,
        "epochs": 5,
        "steps_per_epoch": 2,
        "optimizer": "sgd",
        "val_every": 5,
        "world_size": 2,
    }
    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / "last.pt"
    # an unguarded script as __main__: spawned ranks must not re-run it
    args = [json.dumps(exp), str(tiny["cube"]), json.dumps(tiny["case"]), str(out)]
    proc = _run(args, script=tmp_path / "driver.py")
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, output
    epoch_at_kill = torch.load(ckpt, weights_only=True)["epoch"]
    time.sleep(2.0)  # orphaned ranks would finish the remaining epochs in well under that
    assert torch.load(ckpt, weights_only=True)["epoch"] == epoch_at_kill < 5
    assert not (out / "model.pt").exists()
    train_data, val_data = {"cube": str(tiny["cube"])}, {"cases": [tiny["case"]]}
    capsys.readouterr()
    train_experiment(exp, train_data, val_data, out, seed=5, device="cpu")
    assert (out / "model.pt").is_file()
    single = {k: v for k, v in exp.items() if k != "world_size"}
    train_experiment(single, train_data, val_data, tmp_path / "ref", seed=5, device="cpu")
    got = torch.load(ckpt, weights_only=True)
    ref = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    assert [h["epoch"] for h in got["history"]] == [1, 2, 3, 4, 5]
    for k, v in ref["model"].items():
        torch.testing.assert_close(got["model"][k], v, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        [h["train_loss"] for h in got["history"]],
        [h["train_loss"] for h in ref["history"]],
        rtol=1e-5,
    )


def test_legacy_pickled_checkpoint_is_ignored_not_unpickled(tmp_path):
    """A checkpoint that needs full unpickling (older ctseg: numpy/python RNG tuples) is not
    loaded: training starts afresh instead of executing arbitrary pickled code."""
    import random

    from ctseg.training.checkpoint import load_checkpoint

    path = tmp_path / "last.pt"
    torch.save({"epoch": 3, "rng": {"numpy": np.random.get_state(), "py": random.getstate()}}, path)
    assert load_checkpoint(path) is None
    torch.save({"epoch": 3, "rng": {"torch": torch.get_rng_state()}}, path)
    assert load_checkpoint(path)["epoch"] == 3
    assert load_checkpoint(tmp_path / "absent.pt") is None


def test_world_size_must_divide_the_batch(tiny, tmp_path, monkeypatch):
    """Unequal shards would weight samples unequally under DDP's gradient average: rejected
    before any process is spawned; $CTSEG_WORLD_SIZE is the injectable default."""
    data = ({"cube": str(tiny["cube"])}, {"cases": []})
    with pytest.raises(ConfigError, match="divisible by world_size 3"):
        train_experiment(
            {**EXP, "batch_size": 2, "world_size": 3}, *data, tmp_path, seed=0, device="cpu"
        )
    monkeypatch.setenv("CTSEG_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="divisible by world_size 2"):
        train_experiment({**EXP, "batch_size": 3}, *data, tmp_path, seed=0, device="cpu")
    assert not (tmp_path / "checkpoints").exists()


def test_sagittal_slices_of_the_cube(tiny):
    """slice_axis picks which [z, y, x] axis a 2D model cuts the cube along."""
    import h5py

    def axis(name):
        return ExperimentConfig.from_dict({"cube": "c", "slice_axis": name}, "x").axis

    assert axis("sagittal") == 2 and axis("axial") == 0
    with pytest.raises(ConfigError, match="slice_axis"):
        axis("oblique")
    src = CubeSource(tiny["cube"], [0, 8, 9, 10], dim=2, axis=2)
    with h5py.File(tiny["cube"], "r") as h5:
        img, lab = h5["image"][0], h5["label"][0]
    x, y = src.load([(0, 5), (0, 8)])
    assert x.shape == (2, 1, 32, 16)  # [z, y] planes of a (32, 16, 16) cube
    assert np.array_equal(x[0, 0].numpy(), img[:, :, 5])
    assert np.array_equal(y[1].numpy(), ids_to_classes(lab[:, :, 8], [0, 8, 9, 10]))
    gen = torch.Generator().manual_seed(0)
    plan = src.plan_epoch(gen, steps=5, batch=2, pos_prob=1.0)
    # positive slices along x are those crossing the boxes (x in 4..11)
    assert all(4 <= k < 12 for batch in plan for _, k in batch)
    src.close()


def test_sagittal_2d_vertebra_model_predicts_on_the_ct_grid(tiny, tmp_path):
    exp = {**EXP, "model": "unet2d", "slice_axis": "sagittal", "epochs": 2, "steps_per_epoch": 2}
    exp["batch_size"] = 2
    out = tmp_path / "sag"
    train_experiment(
        exp, {"cube": str(tiny["cube"])}, {"cases": [tiny["case"]]}, out, seed=0, device="cpu"
    )
    _model, meta = load_package(out / "model.pt")
    assert meta["dim"] == 2 and meta["slice_axis"] == 2
    pred_path = tmp_path / "sag.nii.gz"
    predict_case(out / "model.pt", {"ct": tiny["case"]["ct"]}, pred_path, device="cpu")
    pred, ct = sitk.ReadImage(str(pred_path)), sitk.ReadImage(tiny["case"]["ct"])
    assert pred.GetSize() == ct.GetSize() and pred.GetSpacing() == ct.GetSpacing()
    assert set(np.unique(sitk.GetArrayFromImage(pred)).tolist()) <= {0, 8, 9, 10}


def test_worker_process_loading_gives_the_thread_loaders_batches_and_result(tiny, tmp_path):
    """num_workers > 0 loads the planned batches in worker processes: the same tensors in the
    same order as the background thread, hence the same trained weights, bit for bit on CPU."""
    src = CubeSource(tiny["metal_cube"], [0, 1], dim=2)
    plan = src.plan_epoch(torch.Generator().manual_seed(3), steps=6, batch=3, pos_prob=0.5)
    threaded = list(load_batches(src, plan, torch.device("cpu"), workers=0))
    forked = list(load_batches(src, plan, torch.device("cpu"), workers=2))
    assert len(threaded) == len(forked) == 6
    for (xa, ya, _), (xb, yb, wb) in zip(threaded, forked, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and wb >= 0
    src.close()

    exp = {**EXP, "base_width": 4, "epochs": 2, "steps_per_epoch": 3, "val_every": 2}
    train_data, val_data = {"cube": str(tiny["cube"])}, {"cases": [tiny["case"]]}
    train_experiment(exp, train_data, val_data, tmp_path / "thread", seed=5, device="cpu")
    train_experiment(
        {**exp, "num_workers": 2}, train_data, val_data, tmp_path / "workers", seed=5, device="cpu"
    )
    ref = torch.load(tmp_path / "thread" / "checkpoints" / "last.pt", weights_only=True)
    got = torch.load(tmp_path / "workers" / "checkpoints" / "last.pt", weights_only=True)
    assert got["fingerprint"] == ref["fingerprint"]  # loading is not part of the run identity
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v), k
    waits = [h["data_wait_fraction"] for h in got["history"]]
    assert all(0 <= w <= 1 for w in waits)


def test_changed_cube_discards_the_checkpoint_and_retrains(tiny, tmp_path, capsys):
    """A finished run, then one augmentation parameter changes: the cube is rebuilt and
    training must start from epoch 0 (it used to "resume from epoch 2 of 2" and write back
    the old weights)."""
    cube = tmp_path / "cube.h5"
    recipe = {"task": "vertebrae", "spacing_mm": [2, 2, 2], "patch": [16, 16, 32], "copies": 1}
    build_cube(
        [tiny["case"]], cube, {**recipe, "augment": {"scale": [0.9, 0.9], "p_affine": 1.0}}, seed=0
    )
    exp = {**EXP, "base_width": 4, "epochs": 2, "steps_per_epoch": 2, "val_every": 2}
    out = tmp_path / "model"
    args = ({"cube": str(cube)}, {"cases": [tiny["case"]]}, out)
    train_experiment(exp, *args, seed=1, device="cpu")
    first = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    capsys.readouterr()
    train_experiment(exp, *args, seed=1, device="cpu")  # unchanged: a resumed, finished run
    assert "resuming model from epoch 2" in capsys.readouterr().out
    build_cube(
        [tiny["case"]], cube, {**recipe, "augment": {"scale": [1.1, 1.1], "p_affine": 1.0}}, seed=0
    )
    train_experiment(exp, *args, seed=1, device="cpu")
    log = capsys.readouterr().out
    assert "training data changed" in log and "from epoch 0" in log
    assert "epoch 1/2 loss" in log and "resuming" not in log
    second = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(first[k], second[k]) for k in first)
