"""Resource exhaustion: declared sizes checked before reading, per-label work from the ids
present, stats and metal memory within a small multiple of the volume, grouped outputs."""

from __future__ import annotations

import gzip
import json
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import write_series

import ctseg.metal as metal_mod
from ctseg.core.atomic import atomic_paths
from ctseg.core.errors import ConfigError, InputError
from ctseg.core.jsonio import dumps, write_json
from ctseg.core.labels import apply_label_map
from ctseg.core.limits import limit
from ctseg.evaluation.metrics import label_metrics
from ctseg.ingest.dicomio import read_dicom_series
from ctseg.ingest.stats import hu_statistics, summarize_image, summarize_path
from ctseg.metal import label_metal, run_metal


def _bomb(path, shape=(4000, 4000, 1000)):
    h = nib.Nifti1Header()
    h.set_data_dtype(np.int16)
    h.set_data_shape(shape)
    h["vox_offset"] = 352
    with gzip.open(path, "wb") as fh:
        fh.write(h.binaryblock + b"\0" * 1004)
    return path


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _ct(z=60, y=128, x=128, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = np.full((z, y, x), -1000, np.int16)
    yy, xx = np.mgrid[:y, :x]
    body = (yy - y / 2) ** 2 / (0.4 * y) ** 2 + (xx - x / 2) ** 2 / (0.3 * x) ** 2 < 1
    hu[:, body] = rng.integers(-100, 300, (z, int(body.sum())), dtype=np.int16)
    hu[20:25, y // 2 - 4 : y // 2 + 4, x // 2 - 4 : x // 2 + 4] = 4000
    return hu


# ---- declared sizes ---------------------------------------------------------------------------


def test_nifti_header_bomb_refused_before_reading(tmp_path):
    bomb = _bomb(tmp_path / "bomb.nii.gz")
    assert bomb.stat().st_size < 2000
    with pytest.raises(InputError, match="16,000,000,000 voxels") as e:
        summarize_path(bomb, case="b")
    assert e.value.case == "b" and "bomb.nii.gz" in str(e.value) and "max_voxels" in str(e.value)


def test_voxel_limit_from_config_and_environment(tmp_path, monkeypatch):
    files = write_series(tmp_path / "d", np.zeros((3, 8, 8)))
    with pytest.raises(InputError, match="192 voxels, over the limit of 100") as e:
        read_dicom_series(tmp_path / "d", case="v", ingest={"max_voxels": 100}, progress=False)
    assert e.value.path.name == files[0].name
    img, _ = read_dicom_series(tmp_path / "d", ingest={"max_voxels": 192}, progress=False)
    assert img.GetSize() == (8, 8, 3)
    monkeypatch.setenv("CTSEG_MAX_VOXELS", "191")
    with pytest.raises(InputError, match="CTSEG_MAX_VOXELS"):
        read_dicom_series(tmp_path / "d", ingest={"max_voxels": 10**9}, progress=False)
    monkeypatch.setenv("CTSEG_MAX_VOXELS", "lots")
    with pytest.raises(ConfigError, match="CTSEG_MAX_VOXELS"):
        limit("max_voxels")


# ---- per-label work from the ids present ------------------------------------------------------


def test_metrics_with_a_label_of_id_2e9_allocates_by_ids_present():
    truth = np.zeros((20, 20, 20), np.uint32)
    truth[2:8, 2:8, 2:8] = 9
    truth[15, 15, 15] = 2_000_000_000
    pred = truth.copy()
    pred[2, 2, 2] = 0
    rows = []
    peak = _peak(lambda: rows.extend(label_metrics(pred, truth, (1.0, 1.0, 1.0))))
    assert [r["label"] for r in rows] == [9, 2_000_000_000]
    assert rows[1]["dice"] == 1.0
    assert rows[0]["dice"] == pytest.approx(2 * 215 / (215 + 216))
    assert peak < 5 * 2**20  # a table indexed by id would need > 16 GB
    # only the ids asked for
    assert [r["label"] for r in label_metrics(pred, truth, 1.0, labels=[2_000_000_000])] == [
        2_000_000_000
    ]


def test_label_map_with_huge_stray_id():
    arr = np.array([[[0, 27, 2_000_000_000, 44]]], np.int64)
    peak = []
    out = apply_label_map(arr, {27: 24, 44: 7})
    peak.append(_peak(lambda: apply_label_map(arr, {27: 24, 44: 7})))
    assert out.tolist() == [[[0, 24, 0, 7]]]
    assert peak[0] < 2**20


# ---- memory of stats and metal ----------------------------------------------------------------


def test_stats_streamed_reduction_matches_numpy_and_stays_small(monkeypatch):
    import ctseg.ingest.stats as stats_mod

    monkeypatch.setattr(stats_mod, "SLAB_VOXELS", 1 << 14)  # scratch far below the volume
    hu = _ct()
    img = sitk.GetImageFromArray(hu)
    summary = {}
    peak = _peak(lambda: summary.update(summarize_image(img, {}, case="m")))
    ref = hu.astype(np.float64)
    assert summary["hu_min"] == ref.min() and summary["hu_max"] == ref.max()
    assert summary["hu_mean"] == pytest.approx(ref.mean(), rel=1e-12)
    assert summary["hu_std"] == pytest.approx(ref.std(), rel=1e-12)
    # the old float64 copy alone was 4x the int16 volume; now a bounded scratch slab
    assert peak < 0.25 * hu.nbytes, peak / hu.nbytes


def test_hu_statistics_hand_computed():
    st = hu_statistics(np.array([[[1, 2]], [[3, 6]]], np.int16))
    assert st == {"hu_min": 1.0, "hu_max": 6.0, "hu_mean": 3.0, "hu_std": pytest.approx(1.8708287)}


def test_metal_memory_within_a_small_multiple(monkeypatch):
    monkeypatch.setattr(metal_mod, "_SLAB", 1 << 16)
    hu = _ct()
    img = sitk.GetImageFromArray(hu)
    result = []
    peak = _peak(lambda: result.append(label_metal(img)))
    _, info = result[0]
    assert info["voxels"] == 5 * 8 * 8 and info["components"] == 1
    assert info["max_hu_in_body"] == 4000.0
    assert peak < 3.5 * hu.nbytes, peak / hu.nbytes  # was 7x (int64 sizes, int32 labels)


# ---- outputs renamed together -----------------------------------------------------------------


def test_metal_qc_failure_leaves_nothing(tmp_path, monkeypatch):
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(_ct(20, 48, 48)), str(ct))
    out = tmp_path / "out"
    outs = (out / "mask.nii.gz", out / "metal.json", out / "qc.png")

    def broken(*a, **k):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(metal_mod, "write_qc_png", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        run_metal(ct, *outs, case="q")
    assert not out.exists() or list(out.iterdir()) == []
    monkeypatch.undo()
    info = run_metal(ct, *outs, case="q")
    assert all(p.is_file() for p in outs) and sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in outs
    )
    assert json.loads(outs[1].read_text())["voxels"] == info["voxels"]


def test_atomic_paths_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    with pytest.raises(ValueError), atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a")
        raise ValueError("second output failed")
    assert a.read_text() == "old a" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert a.read_text() == "new a" and b.read_text() == "new b"


# ---- strict JSON ------------------------------------------------------------------------------


def test_json_writer_refuses_nan_and_names_file_and_key(tmp_path):
    out = tmp_path / "s.json"
    with pytest.raises(InputError) as e:
        write_json(out, {"case": "c", "center_mm": [1.0, float("nan"), 2.0]})
    assert "s.json" in str(e.value) and "$.center_mm[1]" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=r"\$\.v"):
        dumps({"v": np.float32("inf")})
    assert json.loads(dumps({"v": 1.5})) == {"v": 1.5}


def test_integer_valued_float_label_map_is_accepted():
    from ctseg.ingest.volume import map_labels

    arr = np.array([[[0.0, 9.0, 27.0]]], np.float32)
    assert map_labels(arr, None, case="c", path=None).tolist() == [[[0, 9, 27]]]
    assert map_labels(arr, {27: 24}, case="c", path=None).tolist() == [[[0, 0, 24]]]
    with pytest.raises(InputError, match="non-integer"):
        map_labels(arr + 0.5, None, case="c", path=None)
    with pytest.raises(InputError, match="pixel type complex"):
        map_labels(arr.astype(np.complex64), None, case="c", path=None)
