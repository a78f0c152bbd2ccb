"""fetch guards: archive traversal, declared-size bombs, download cap, stale temporaries."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from ctseg.core.atomic import atomic_dir, stale_temporaries
from ctseg.core.errors import InputError
from ctseg.ingest.fetch import fetch_case, sha256_file, unpack_archive


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _row(**kw) -> dict:
    return {"case": "c1", "source": "url", "location": "", "sha256": "", **kw}


def test_zip_member_escaping_to_a_sibling_with_the_same_prefix(tmp_path):
    """``../.unpacked_evil/x`` starts with the target's own name: a string-prefix check
    would let it through; the resolved-path check must not."""
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../.unpacked_evil/x", b"gotcha")
    dest = tmp_path / ".unpacked"
    with pytest.raises(InputError, match="escapes the target folder") as e:
        unpack_archive(archive, dest, case="ev", src="http://h/evil.zip")
    assert e.value.case == "ev" and "evil.zip" in str(e.value)
    assert not (tmp_path / ".unpacked_evil").exists()


def test_tar_member_escaping_to_a_sibling_with_the_same_prefix(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../.unpacked_evil/x")
        info.size = 6
        tf.addfile(info, io.BytesIO(b"gotcha"))
    with pytest.raises(InputError, match="escapes the target folder"):
        unpack_archive(archive, tmp_path / ".unpacked", case="ev", src="evil.tar")
    assert not (tmp_path / ".unpacked_evil").exists()


def test_zip_bomb_refused_by_declared_size(tmp_path):
    """A tiny zip that declares (and inflates to) 4 MiB, against a 1 MiB limit: refused
    before anything is written."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * (4 << 20))
    assert archive.stat().st_size < 20_000
    dest = tmp_path / "out"
    with pytest.raises(InputError, match="max_unpacked_bytes") as e:
        unpack_archive(
            archive, dest, case="b", src=str(archive), ingest={"max_unpacked_bytes": 1 << 20}
        )
    assert "4,194,304" in str(e.value) and "bomb.zip" in str(e.value)
    assert list(dest.iterdir()) == []


def test_tar_gz_bomb_refused_by_declared_size(tmp_path, monkeypatch):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("a.dcm")
        info.size = 3 << 20
        tf.addfile(info, io.BytesIO(b"\0" * info.size))
    monkeypatch.setenv("CTSEG_MAX_UNPACKED_BYTES", str(1 << 20))  # the environment wins
    with pytest.raises(InputError, match="CTSEG_MAX_UNPACKED_BYTES"):
        unpack_archive(archive, tmp_path / "out", case="b", src=str(archive))


def test_download_size_cap(http_root, tmp_path):
    root, base = http_root
    (root / "big.nii").write_bytes(b"\0" * 300_000)
    out, man = tmp_path / "raw" / "d", tmp_path / "raw" / "d.manifest.json"
    url = f"{base}/big.nii"
    with pytest.raises(InputError, match="over the limit") as e:
        fetch_case(
            _row(case="d", location=url, sha256=sha256_file(root / "big.nii")),
            out,
            man,
            {},
            ingest={"max_download_bytes": 100_000},
        )
    assert e.value.case == "d" and url in str(e.value)
    assert not out.exists() and not man.exists()
    assert list((tmp_path / "raw").iterdir()) == []


def test_killed_fetch_temporaries_removed_on_next_run(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    # what a SIGKILLed fetch leaves: its hidden temp folder (and a half-swapped .old)
    stale = raw / ".c1.abcd_123.tmp"
    (stale / "dicom").mkdir(parents=True)
    (stale / "dicom" / "x.dcm").write_bytes(b"partial")
    old = raw / ".c1.old"
    old.mkdir()
    other = raw / ".c1b.abcd_123.tmp"  # another case's temporary: not ours to delete
    other.mkdir()
    unrelated = raw / ".c1.x.tmp"  # not a name our writer makes
    unrelated.mkdir()
    assert set(stale_temporaries(raw / "c1")) == {old, stale}
    src = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), str(src))
    fetch_case(
        {"case": "c1", "source": "nifti", "location": str(src)},
        raw / "c1",
        raw / "c1.manifest.json",
        {},
    )
    assert not stale.exists() and not old.exists()
    assert other.exists() and unrelated.exists()
    assert (raw / "c1" / "image.nii.gz").is_file()


def test_atomic_dir_failure_leaves_no_temporary(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_download_cap_default_is_large():
    from ctseg.core.limits import DEFAULTS, limit

    assert limit("max_download_bytes") == DEFAULTS["max_download_bytes"] == 20 * 2**30
