"""fetch_case: every source kind, checksums against a real local HTTP server, atomicity."""

from __future__ import annotations

import hashlib
import http.server
import json
import sys
import tarfile
import threading
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import write_series

from ctseg.core.errors import InputError
from ctseg.ingest.fetch import fetch_case, sha256_file


@pytest.fixture
def http_root(tmp_path):
    """Serve ``tmp_path / 'www'`` on 127.0.0.1 (a real server on an ephemeral port)."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _nifti(path: Path, seed=0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(-1000, 1000, (4, 5, 6)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 2.0, 2.5))
    sitk.WriteImage(img, str(path))
    return arr


def _row(**kw) -> dict:
    row = {
        "case": "c1",
        "source": "",
        "location": "",
        "sha256": "",
        "labels": "",
        "centroids": "",
        "label_map": "",
        "split": "train",
    }
    row.update(kw)
    return row


def _check_manifest(manifest: Path, out: Path, case: str, source: str):
    m = json.loads(manifest.read_text())
    assert m["case"] == case and m["source"] == source
    listed = {f["path"] for f in m["files"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert listed == on_disk
    for f in m["files"]:
        p = out / f["path"]
        assert f["size"] == p.stat().st_size
        assert f["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    return m


def test_nifti_with_labels_and_centroids(tmp_path):
    src = tmp_path / "scan.nii.gz"
    _nifti(src)
    lab = tmp_path / "seg.nrrd"
    sitk.WriteImage(sitk.Image(6, 5, 4, sitk.sitkUInt8), str(lab))
    cen = tmp_path / "c.json"
    cen.write_text('[{"label": 20, "x": 1, "y": 2, "z": 3}]')
    out, man = tmp_path / "raw" / "c1", tmp_path / "raw" / "c1.manifest.json"
    fetch_case(
        _row(source="nifti", location=str(src), labels=str(lab), centroids=str(cen)), out, man, {}
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "centroids.json",
        "image.nii.gz",
        "labels.nrrd",
    ]
    assert sha256_file(out / "image.nii.gz") == sha256_file(src)
    _check_manifest(man, out, "c1", "nifti")


def test_nrrd(tmp_path):
    src = tmp_path / "a.nrrd"
    _nifti(src)
    out, man = tmp_path / "raw" / "n", tmp_path / "raw" / "n.manifest.json"
    fetch_case(_row(case="n", source="nrrd", location=str(src)), out, man, {})
    assert [p.name for p in out.iterdir()] == ["image.nrrd"]


def test_dicom_series_choice_copies_only_that_series(tmp_path):
    src = tmp_path / "mixed"
    write_series(src, np.zeros((2, 4, 4)), series_uid="1.2.1", prefix="a")
    write_series(src / "sub", np.zeros((3, 4, 4)), series_uid="1.2.2", prefix="b")
    (src / "README.txt").write_text("hello")
    out, man = tmp_path / "raw" / "d", tmp_path / "raw" / "d.manifest.json"
    fetch_case(_row(case="d", source="dicom", location=str(src), series_uid="1.2.2"), out, man, {})
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == ["dicom/sub/b0000.dcm", "dicom/sub/b0001.dcm", "dicom/sub/b0002.dcm"]
    m = _check_manifest(man, out, "d", "dicom")
    assert m["series_uid"] == "1.2.2"
    # without a choice every file is copied
    fetch_case(_row(case="d", source="dicom", location=str(src)), out, man, {})
    assert len([p for p in out.rglob("*") if p.is_file()]) == 6


def test_url_nifti_good_checksum(http_root, tmp_path):
    root, base = http_root
    arr = _nifti(root / "scan.nii.gz")
    sha = sha256_file(root / "scan.nii.gz")
    out, man = tmp_path / "raw" / "u", tmp_path / "raw" / "u.manifest.json"
    fetch_case(
        _row(case="u", source="url", location=f"{base}/scan.nii.gz", sha256=sha.upper()),
        out,
        man,
        {},
    )
    assert [p.name for p in out.iterdir()] == ["image.nii.gz"]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "image.nii.gz"))), arr)
    _check_manifest(man, out, "u", "url")


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_url_archive_of_dicom(http_root, tmp_path, kind):
    root, base = http_root
    series = tmp_path / "series"
    files = write_series(series, np.zeros((3, 4, 4)))
    archive = root / f"s.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for f in files:
                zf.write(f, f"series/{f.name}")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for f in files:
                tf.add(f, f"series/{f.name}")
    out, man = tmp_path / "raw" / "z", tmp_path / "raw" / "z.manifest.json"
    fetch_case(
        _row(case="z", source="url", location=f"{base}/s.{kind}", sha256=sha256_file(archive)),
        out,
        man,
        {},
    )
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == [f"dicom/series/{f.name}" for f in files]
    for f in files:
        assert (out / "dicom" / "series" / f.name).read_bytes() == f.read_bytes()


def test_url_bad_checksum_leaves_nothing(http_root, tmp_path):
    root, base = http_root
    _nifti(root / "scan.nii.gz")
    real = sha256_file(root / "scan.nii.gz")
    out, man = tmp_path / "raw" / "b", tmp_path / "raw" / "b.manifest.json"
    url = f"{base}/scan.nii.gz"
    with pytest.raises(InputError) as e:
        fetch_case(_row(case="b", source="url", location=url, sha256="0" * 64), out, man, {})
    msg = str(e.value)
    assert "'b'" in msg and url in msg and real in msg and "0" * 64 in msg
    assert not out.exists() and not man.exists()
    assert list((tmp_path / "raw").iterdir()) == []


def test_url_404(http_root, tmp_path):
    _, base = http_root
    out, man = tmp_path / "raw" / "x", tmp_path / "raw" / "x.manifest.json"
    url = f"{base}/missing.nii.gz"
    with pytest.raises(InputError, match="HTTP 404") as e:
        fetch_case(_row(case="x", source="url", location=url, sha256="a" * 64), out, man, {})
    assert e.value.case == "x" and url in str(e.value)
    assert not out.exists() and not man.exists()


def test_failed_refetch_keeps_previous_copy(tmp_path):
    src = tmp_path / "a.nii.gz"
    _nifti(src)
    out, man = tmp_path / "raw" / "k", tmp_path / "raw" / "k.manifest.json"
    fetch_case(_row(case="k", source="nifti", location=str(src)), out, man, {})
    before = sha256_file(out / "image.nii.gz")
    with pytest.raises(InputError):
        fetch_case(
            _row(case="k", source="nifti", location=str(src), labels=str(tmp_path / "nope.nii.gz")),
            out,
            man,
            {},
        )
    assert sha256_file(out / "image.nii.gz") == before
    assert [p.name for p in out.iterdir()] == ["image.nii.gz"]


@pytest.mark.parametrize(
    "row, match",
    [
        (_row(source="ftp", location="x"), "unknown source kind"),
        (_row(source="nifti", location=""), "needs a location"),
        (_row(source="url", location="http://127.0.0.1:9/a.nii.gz"), "no sha256"),
        (_row(source="phantom", location="abc"), "integer seed"),
        (_row(source="nifti", location="/does/not/exist.nii.gz"), "does not exist"),
    ],
)
def test_bad_rows_name_the_case(tmp_path, row, match):
    out, man = tmp_path / "raw" / "c1", tmp_path / "raw" / "c1.manifest.json"
    with pytest.raises(InputError, match=match) as e:
        fetch_case(row, out, man, {})
    assert e.value.case == "c1" and "'c1'" in str(e.value)
    assert not out.exists() and not man.exists()


def test_phantom_source_passes_seed_and_case_implants(tmp_path, monkeypatch):
    """The phantom source hands the seed and this case's implant list to ctseg.phantom."""
    calls = []

    def write_phantom_case(out_dir, seed, params):
        calls.append((seed, params))
        (Path(out_dir) / "dicom").mkdir()
        (Path(out_dir) / "dicom" / "x.dcm").write_bytes(b"x")

    fake = types.ModuleType("ctseg.phantom")
    fake.write_phantom_case = write_phantom_case
    monkeypatch.setitem(sys.modules, "ctseg.phantom", fake)
    out, man = tmp_path / "raw" / "p02", tmp_path / "raw" / "p02.manifest.json"
    fetch_case(
        _row(case="p02", source="phantom", location="7"),
        out,
        man,
        {"noise_hu": 5.0, "implants": {"p02": ["L3", "L4"]}},
    )
    assert calls == [(7, {"noise_hu": 5.0, "implants": ["L3", "L4"]})]
    m = _check_manifest(man, out, "p02", "phantom")
    assert m["files"][0]["sha256"] == hashlib.sha256(b"x").hexdigest()


def test_phantom_case_through_volume_stats_and_metal(tmp_path):
    """fetch(phantom) -> build_volume -> summarize_raw -> run_metal against the phantom's truth."""
    import pydicom

    import ctseg.phantom as phantom
    from ctseg.ingest.stats import summarize_raw
    from ctseg.ingest.volume import build_volume
    from ctseg.metal import run_metal

    params = {
        "shape": [40, 36, 48],
        "spacing_mm": [7.0, 7.0, 7.0],
        "noise_hu": 0.0,
        "blur_mm": 0.0,
        "implants": ["L2"],
    }
    out, man = tmp_path / "raw" / "p", tmp_path / "raw" / "p.manifest.json"
    fetch_case(_row(case="p", source="phantom", location="3"), out, man, params)
    assert (
        (out / "dicom").is_dir()
        and (out / "labels.nii.gz").is_file()
        and (out / "metal_truth.nii.gz").is_file()
    )
    _check_manifest(man, out, "p", "phantom")
    ph = phantom.generate(3, params, progress=False)
    vol = tmp_path / "vol"
    build_volume(
        out,
        vol / "ct.nii.gz",
        vol / "labels.nii.gz",
        vol / "centroids.json",
        case="p",
        label_map=None,
        ingest={},
    )
    ct = sitk.ReadImage(str(vol / "ct.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(ct), ph.hu)
    assert ct.GetSpacing() == pytest.approx(ph.spacing) and ct.GetOrigin() == pytest.approx(
        ph.origin, abs=1e-3
    )
    assert np.array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(vol / "labels.nii.gz"))), ph.labels
    )
    summary = summarize_raw(out, case="p", ingest={})
    ds = pydicom.dcmread(
        next(iter(sorted((out / "dicom").rglob("*.dcm")))), stop_before_pixels=True
    )
    text = json.dumps(summary)
    for ident in (str(ds.PatientName), str(ds.PatientID)):
        assert ident and ident not in text
    assert summary["hu_max"] == float(ph.hu.max()) and summary["n_slices"] == 48
    info = run_metal(
        vol / "ct.nii.gz",
        tmp_path / "m.nii.gz",
        tmp_path / "m.json",
        tmp_path / "m.png",
        threshold_hu=3000,
        min_size=1,
        dilation_vox=0,
    )
    assert info["voxels"] == int(ph.metal.sum()) > 0
    assert np.array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.nii.gz"))), ph.metal
    )


def test_cli_fetch(tmp_path):
    from ctseg.cli import main

    src = tmp_path / "a.nrrd"
    _nifti(src)
    out = tmp_path / "raw" / "cli"
    assert main(["fetch", "cli", "nrrd", str(src), "--out", str(out)]) == 0
    _check_manifest(tmp_path / "raw" / "cli.manifest.json", out, "cli", "nrrd")
    assert (
        main(
            [
                "fetch",
                "cli2",
                "url",
                "http://127.0.0.1:9/x.nii.gz",
                "--out",
                str(tmp_path / "raw" / "cli2"),
            ]
        )
        == 1
    )
    assert not (tmp_path / "raw" / "cli2").exists()


def test_corrupt_nifti_is_reported_under_the_users_path(tmp_path: Path) -> None:
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    out = tmp_path / "raw" / "c9"
    with pytest.raises(InputError) as err:
        fetch_case(
            {"case": "c9", "source": "nifti", "location": str(bad), "split": "test"},
            out,
            tmp_path / "raw" / "c9.manifest.json",
            {},
        )
    assert "c9" in str(err.value) and str(bad) in str(err.value) and "unreadable" in str(err.value)
    assert not out.exists() and not (tmp_path / "raw" / "c9.manifest.json").exists()
