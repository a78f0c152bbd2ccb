"""Model packages (plan, format checks, export/import) and ``ctseg segment`` on new scans."""

from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ctseg.cli import main
from ctseg.core.errors import InputError
from ctseg.inference.package import (
    PACKAGE_FORMAT,
    export_package,
    import_package,
    load_package,
    make_plan,
    save_package,
)
from ctseg.inference.segment import segment_inputs
from ctseg.ingest.dicomwrite import write_dicom_series
from ctseg.models import build_model

EXP = {"task": "vertebrae", "model": "unet3d", "base_width": 4, "depth": 2, "labels": [8, 9, 10]}
META = {
    "task": "vertebrae",
    "dim": 3,
    "n_classes": 4,
    "class_ids": [0, 8, 9, 10],
    "spacing_mm": [4.0, 4.0, 4.0],
    "patch": [8, 8, 16],
    "hu_window": [-1000, 2000],
    "model_kwargs": {"model": "unet3d", "base_width": 4, "depth": 2, "norm": "instance"},
}


@pytest.fixture
def package(tmp_path):
    torch.manual_seed(0)
    net = build_model(EXP, 4)
    with torch.no_grad():  # a head biased to foreground, so segmentations are not empty
        net.head.bias.copy_(torch.tensor([-2.0, 1.0, 0.5, 0.2]))
    path = tmp_path / "model" / "model.pt"
    path.parent.mkdir()
    plan = make_plan(META, EXP, {"training_cases": ["a", "b"], "validation_cases": ["c"]})
    save_package(path, net, EXP, plan)
    return path


def ct_image(shape_zyx=(24, 20, 22), spacing=(2.0, 2.0, 2.5)):
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 200, shape_zyx).astype(np.float32)
    arr[:, 6:14, 8:14] += 900
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((10.0, -20.0, 5.0))
    return img


def test_plan_carries_what_applying_the_model_needs(package):
    model, plan = load_package(package)
    assert plan["format"] == PACKAGE_FORMAT and plan["class_names"] == {
        "8": "T1",
        "9": "T2",
        "10": "T3",
    }
    assert plan["training_cases"] == ["a", "b"] and plan["validation_cases"] == ["c"]
    assert len(plan["config_hash"]) == 64 and plan["ctseg_version"]
    assert plan["experiment"]["labels"] == [8, 9, 10]
    assert not model.training


def test_export_import_round_trip_gives_the_same_network(package, tmp_path):
    archive = export_package(package.parent, tmp_path / "pkg.zip")
    with zipfile.ZipFile(archive) as z:
        assert set(z.namelist()) == {"model.pt", "plan.json"}
        assert json.loads(z.read("plan.json"))["plan"]["task"] == "vertebrae"
    got = import_package(archive, tmp_path / "imported")
    a, _ = load_package(package)
    b, _ = load_package(got)
    x = torch.randn(1, 1, 8, 8, 8)
    assert torch.equal(a(x), b(x))


def test_archive_with_foreign_members_is_refused(package, tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.write(package, "model.pt")
        z.writestr("../evil.py", "print(1)")
    with pytest.raises(InputError, match="unexpected package members"):
        import_package(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def rewrite_plan(src, dst, **changes):
    blob = torch.load(src, weights_only=True)
    plan = json.loads(blob["meta_json"])
    for k, v in changes.items():
        if v is None:
            plan.pop(k)
        else:
            plan[k] = v
    blob["meta_json"] = json.dumps(plan)
    torch.save(blob, dst)
    return dst


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": 1}, "format 1 .* is not the format"),
        ({"patch": None}, "plan lacks patch"),
        ({"n_classes": 100000}, "n_classes=100000 outside"),
        ({"model_kwargs": {"model": "unet3d", "base_width": 100000, "depth": 2}}, "base_width"),
    ],
)
def test_bad_packages_are_refused_naming_the_file(package, tmp_path, changes, message):
    bad = rewrite_plan(package, tmp_path / "bad.pt", **changes)
    with pytest.raises(InputError, match=message) as info:
        load_package(bad)
    assert "bad.pt" in str(info.value)


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil(), "meta_json": "{}", "experiment_json": "{}"}, path)
    with pytest.raises(InputError) as info:
        load_package(path)
    msg = str(info.value)
    assert "evil.pt" in msg and "could run code" in msg and "weights_only=False" not in msg
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InputError, match="raw.pt"):
        load_package(raw)


def test_segment_writes_outputs_on_each_inputs_own_grid(package, tmp_path):
    ct = ct_image()
    nii = tmp_path / "scan one.nii.gz"
    sitk.WriteImage(sitk.DICOMOrient(ct, "RAS"), str(nii))
    nrrd = tmp_path / "scan2.nrrd"
    sitk.WriteImage(ct, str(nrrd))
    dicom = tmp_path / "dicom_scan"
    write_dicom_series(
        np.round(sitk.GetArrayFromImage(ct)).astype(np.int16),
        ct.GetSpacing(),
        ct.GetOrigin(),
        None,
        dicom,
        seed=1,
    )
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image([16, 16], sitk.sitkInt16), str(flat))
    nan = tmp_path / "nan.nii.gz"
    arr = sitk.GetArrayFromImage(ct)
    arr[3, 3, 3] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(ct)
    sitk.WriteImage(bad, str(nan))
    out = tmp_path / "out"
    results = segment_inputs([nii, flat, nrrd, nan, dicom], package, out, device="cpu")
    by_name = {r.source.name: r for r in results}
    assert by_name["flat.nii.gz"].error and "flat.nii.gz" in by_name["flat.nii.gz"].error
    assert by_name["nan.nii.gz"].error and "nan.nii.gz" in by_name["nan.nii.gz"].error
    assert not (out / "flat").exists() and not (out / "nan").exists()
    for name, src in (("scan_one", nii), ("scan2", nrrd), ("dicom_scan", None)):
        labels = sitk.ReadImage(str(out / name / "labels.nii.gz"))
        ref = sitk.ReadImage(str(src)) if src else ct
        assert labels.GetSize() == ref.GetSize()
        np.testing.assert_allclose(labels.GetOrigin(), ref.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(labels.GetDirection(), ref.GetDirection(), atol=1e-6)
        assert set(np.unique(sitk.GetArrayFromImage(labels))) <= {0, 8, 9, 10}
        assert isinstance(json.loads((out / name / "centroids.json").read_text()), list)
    expected = {
        "labels.seg.nrrd",
        "centroids.mrk.json",
        "centroids_ctd.json",
        "statistics.json",
        "qc.json",
        "qc.png",
    }
    for name in ("scan_one", "scan2", "dicom_scan"):
        assert expected <= {p.name for p in (out / name).iterdir()}
        qc = json.loads((out / name / "qc.json").read_text())
        assert isinstance(qc["trusted"], bool) and isinstance(qc["flags"], list)
    assert (out / "dicom_scan" / "labels.seg.dcm").is_file()  # DICOM input: a DICOM-SEG too
    assert not (out / "scan2" / "labels.seg.dcm").exists()
    # the same scan stored as RAS NIfTI and as LPS NRRD gives the same labels in world space
    a = sitk.GetArrayFromImage(
        sitk.DICOMOrient(sitk.ReadImage(str(out / "scan_one" / "labels.nii.gz")), "LPS")
    )
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "scan2" / "labels.nii.gz")))
    assert np.array_equal(a, b)


def test_a_dicom_seg_that_cannot_be_written_leaves_the_other_outputs(
    package, tmp_path, monkeypatch
):
    """As in the workflow: a DICOM source whose DICOM-SEG fails (anonymised UIDs, no vertebra
    found) still gets every other output, and qc.json notes why the DICOM-SEG is missing."""
    import ctseg.formats.dicom_seg as dseg

    def refuse(*_a, **_k):
        raise InputError("source slice has no SOP Instance UID", path="slice1.dcm")

    monkeypatch.setattr(dseg, "write_dicom_seg", refuse)
    ct = ct_image()
    dicom = tmp_path / "anon"
    arr = np.round(sitk.GetArrayFromImage(ct)).astype(np.int16)
    write_dicom_series(arr, ct.GetSpacing(), ct.GetOrigin(), None, dicom, seed=2)
    (res,) = segment_inputs([dicom], package, tmp_path / "o", device="cpu")
    assert res.error is None and "labels.seg.dcm" not in res.files
    assert {"labels.nii.gz", "qc.json", "statistics.json"} <= set(res.files)
    qc = json.loads((tmp_path / "o" / "anon" / "qc.json").read_text())
    assert any("DICOM-SEG not written" in n and "SOP Instance UID" in n for n in qc["notes"])


def test_segment_cli_reports_failures_and_goes_on(package, tmp_path, capsys):
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(ct_image(), str(good))
    missing = tmp_path / "missing.nii.gz"
    code = main(
        [
            "segment",
            str(missing),
            str(good),
            "--model",
            str(package),
            "--out",
            str(tmp_path / "o"),
            "--fast",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "missing.nii.gz" in err and "1 of 2 inputs failed" in err
    assert (tmp_path / "o" / "good" / "labels.nii.gz").is_file()


def test_segment_cli_passes_the_localiser(monkeypatch, tmp_path):
    """``--localiser`` reaches the segmenter (a foreground model cannot name levels without)."""
    import ctseg.commands.segment as cmd

    seen = {}
    monkeypatch.setattr(cmd, "segment_inputs", lambda *a, **kw: seen.update(kw) or [])
    loc = tmp_path / "centroids.pt"
    assert (
        main(["segment", "x.nii.gz", "--model", "m.pt", "--out", "o", "--localiser", str(loc)]) == 0
    )
    assert seen["localiser"] == loc
    assert seen["float32"] is False
    main(["segment", "x.nii.gz", "--model", "m.pt", "--out", "o", "--float32"])
    assert seen["float32"] is True


def test_the_plan_records_the_training_precision_and_float32_declines_it(tmp_path):
    """A model trained with ``cpu_bf16`` is applied in bf16 on a bf16 CPU (its plan says so);
    ``--float32`` (``float32=True``) turns that off for one segmenter."""
    from ctseg.inference.segment import Segmenter

    exp = {**EXP, "cpu_bf16": True}
    path = tmp_path / "m.pt"
    save_package(path, build_model(exp, 4), exp, make_plan(META, exp))
    assert load_package(path)[1]["cpu_bf16"] is True
    assert make_plan(META, {**exp, "cpu_bf16": False})["cpu_bf16"] is False
    assert Segmenter(path, device="cpu").plan["cpu_bf16"] is True
    assert Segmenter(path, device="cpu", float32=True).plan["cpu_bf16"] is False


def test_float32_declines_the_localisers_bf16_too(monkeypatch, tmp_path):
    """``--float32`` reaches the localiser's package as well: its three stages then run in
    float32 (:func:`ctseg.localisation.predict.forward_precision` reads ``cpu_bf16``)."""
    import ctseg.localisation.predict as loc
    from ctseg.inference.segment import Segmenter

    monkeypatch.setattr(loc, "load_localiser", lambda *a: (None, {"cpu_bf16": True}))
    exp = {**EXP, "cpu_bf16": True}
    path = tmp_path / "m.pt"
    save_package(path, build_model(exp, 4), exp, make_plan(META, exp))
    assert Segmenter(path, device="cpu", localiser="l.pt").localiser[1]["cpu_bf16"] is True
    assert Segmenter(path, device="cpu", localiser="l.pt", float32=True).localiser[1] == {
        "cpu_bf16": False
    }


def test_a_drr_model_is_refused_for_ct_input(package, tmp_path):
    exp = {"task": "bone_drr", "model": "unet2d", "base_width": 4, "depth": 2}
    meta = {**META, "task": "bone_drr", "dim": 2, "n_classes": 2, "class_ids": [0, 1],
            "model_kwargs": {"model": "unet2d", "base_width": 4, "depth": 2, "norm": "instance"}}  # fmt: skip
    path = tmp_path / "drr.pt"
    save_package(path, build_model(exp, 2), exp, make_plan(meta, exp))
    with pytest.raises(InputError, match="bone_drr model segments DRR images"):
        segment_inputs([tmp_path / "x.nii.gz"], path, tmp_path / "o")
