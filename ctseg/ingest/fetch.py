"""Fetch one case's raw scan into ``raw/{case}/`` plus a manifest of what was fetched.

Sources (case-sheet column ``source``):

- ``phantom``: ``location`` is an integer seed; ``ctseg.phantom.write_phantom_case`` writes a
  synthetic DICOM series with truth (labels, centroids, metal).
- ``dicom``: a folder; its DICOM files are copied into ``dicom/``. With a ``series_uid``
  column only that series' files are copied, so the raw case holds exactly one series.
- ``nifti`` / ``nrrd``: one file copied to ``image.nii.gz`` / ``image.nii`` / ``image.nrrd``.
- ``url``: downloaded over HTTP(S) with urllib, streamed to disk while hashing; the mandatory
  ``sha256`` must match (a silently changed remote file would break reproducibility). A
  ``.zip`` / ``.tar`` / ``.tar.gz`` / ``.tgz`` of DICOM files is unpacked into ``dicom/``; a
  ``.nii.gz`` / ``.nii`` / ``.nrrd`` becomes the image.

Optional ``labels`` and ``centroids`` columns are copied to ``labels.nii.gz|labels.nrrd`` and
``centroids.json``. Everything is written to a temporary folder renamed onto ``out_dir`` only on
success; the manifest (files, sizes, sha256) is written last, so its presence means complete.
A killed fetch's hidden temporaries (``.CASE.XXXXXXXX.tmp``) are removed by the next fetch of
the same case (``ctseg.core.atomic``).

Limits (``ctseg.core.limits``; ``ingest.max_download_bytes``, ``ingest.max_unpacked_bytes``):
a download stops with an error once it exceeds the cap (or when Content-Length already says
so), and an archive whose members declare more bytes in total than the unpack limit is refused
before anything is extracted. Every member must resolve inside the target folder
(``Path.is_relative_to`` on resolved paths, for zip and tar alike); links in tar archives are
refused by the ``data`` extraction filter.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from ctseg.core.atomic import atomic_dir
from ctseg.core.errors import InputError
from ctseg.core.imageio import RAW_SUFFIXES
from ctseg.core.jsonio import write_json
from ctseg.core.limits import check_bytes, limit

CHUNK = 1 << 20
SOURCES = ("phantom", "dicom", "nifti", "nrrd", "url")
_ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_VOLUMES = {s: f"image{s}" for s in RAW_SUFFIXES}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (scans can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _field(case: dict, key: str) -> str:
    value = case.get(key)
    if value is None:
        return ""
    value = str(value).strip()
    return "" if value.lower() in {"nan", "none"} else value


def _suffix(name: str) -> str:
    low = name.lower()
    for suf in (*_ARCHIVES, *_VOLUMES):
        if low.endswith(suf):
            return suf
    return Path(low).suffix


def download(
    url: str,
    dest: Path,
    *,
    sha256: str,
    case: str,
    timeout_s: float = 60,
    ingest: dict | None = None,
) -> str:
    """Stream ``url`` to ``dest`` while hashing; InputError on HTTP failure, checksum mismatch
    or a size over ``max_download_bytes`` (checked on Content-Length and while streaming)."""
    h = hashlib.sha256()
    cap = limit("max_download_bytes", ingest)
    got_bytes = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(dest, "wb") as out:
            total = resp.headers.get("Content-Length")
            if total and total.isdigit():
                check_bytes(
                    int(total),
                    "max_download_bytes",
                    url,
                    "download (Content-Length)",
                    case=case,
                    ingest=ingest,
                )
            with tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                desc=f"fetch {case}",
                disable=None,
            ) as bar:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    got_bytes += len(block)
                    if got_bytes > cap:
                        check_bytes(
                            got_bytes,
                            "max_download_bytes",
                            url,
                            "download (so far)",
                            case=case,
                            ingest=ingest,
                        )
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        raise InputError(
            f"download of {url} failed: HTTP {exc.code} {exc.reason}", path=url, case=case
        ) from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise InputError(f"download of {url} failed: {exc}", path=url, case=case) from exc
    got = h.hexdigest()
    if got != sha256.lower():
        raise InputError(
            f"sha256 mismatch for {url}: expected {sha256.lower()}, got {got}", path=url, case=case
        )
    return got


def _check_members(
    names_sizes: list[tuple[str, int]], dest: Path, case: str, src: str, ingest: dict | None
) -> None:
    """Every member resolves inside ``dest`` and the declared total fits the unpack limit."""
    root = dest.resolve()
    total = 0
    for name, size in names_sizes:
        target = (root / name).resolve()
        if not target.is_relative_to(root):
            raise InputError(
                f"archive member {name!r} escapes the target folder", path=src, case=case
            )
        total += max(0, int(size))
    check_bytes(
        total,
        "max_unpacked_bytes",
        src,
        f"archive content ({len(names_sizes)} members, declared)",
        case=case,
        ingest=ingest,
    )


def unpack_archive(
    archive: Path, dest: Path, *, case: str, src: str, ingest: dict | None = None
) -> None:
    """Unpack a zip / tar(.gz) safely: no member may leave ``dest`` and the declared sizes
    must fit ``max_unpacked_bytes``, both checked before anything is extracted. zipfile and
    tarfile never write more than a member's declared size, so the check bounds the disk use."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                _check_members([(i.filename, i.file_size) for i in infos], dest, case, src, ingest)
                zf.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                _check_members([(m.name, m.size) for m in members], dest, case, src, ingest)
                tf.extractall(dest, members=members, filter="data")
        else:
            raise InputError("download is neither a zip nor a tar archive", path=src, case=case)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"cannot unpack archive: {exc}", path=src, case=case) from exc


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link ``src`` to ``dest``, copying only where a link is impossible.

    raw/ then costs no second copy of a cohort's bytes on the same file system; across file
    systems (EXDEV) or where links are refused (EPERM, e.g. protected_hardlinks on files of
    another user) it falls back to a copy. Nothing downstream writes into raw/, and an edited
    source reruns fetch (Snakemake sees the changed input), so sharing the inode is safe.
    """
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _copy_dicom(src: Path, dest: Path, *, case: str, series_uid: str) -> None:
    """Link the DICOM files of ``src`` (only ``series_uid``'s when given) keeping relative paths."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not src.is_dir():
        raise InputError("dicom location is not a folder", path=src, case=case)
    n = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        if series_uid:
            try:
                ds = pydicom.dcmread(
                    path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]
                )
            except (InvalidDicomError, EOFError, OSError, ValueError):
                continue
            if str(ds.get("SeriesInstanceUID", "")) != series_uid:
                continue
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(path, target)
        n += 1
    if n == 0:
        what = f"no files of series {series_uid}" if series_uid else "no files"
        raise InputError(f"dicom folder holds {what}", path=src, case=case)


def _copy_file(src: Path, dest: Path, case: str, what: str) -> None:
    if not src.is_file():
        raise InputError(f"{what} file does not exist", path=src, case=case)
    link_or_copy(src, dest)


def _check_header(src: Path, case: str, what: str, ingest: dict | None = None) -> None:
    """Read the image header now, so a corrupt or oversized (``max_voxels``) file is reported
    under the user's own path."""
    import SimpleITK as sitk

    from ctseg.core.limits import check_voxels

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(src))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"unreadable {what} ({first})", path=src, case=case) from exc
    check_voxels(reader.GetSize(), src, case=case, ingest=ingest)


def _volume_name(name: str, src: str, case: str) -> str:
    suf = _suffix(name)
    if suf not in _VOLUMES:
        raise InputError(
            f"unsupported image file type {suf!r} (need .nii.gz, .nii or .nrrd)",
            path=src,
            case=case,
        )
    return _VOLUMES[suf]


def _fetch_url(
    url: str,
    tmp: Path,
    *,
    case: str,
    sha: str,
    timeout_s: float,
    series_uid: str,
    ingest: dict | None = None,
) -> None:
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    suf = _suffix(name)
    download_to = tmp / f".download{suf}"
    download(url, download_to, sha256=sha, case=case, timeout_s=timeout_s, ingest=ingest)
    if suf in _ARCHIVES:
        unpacked = tmp / ".unpacked"
        unpack_archive(download_to, unpacked, case=case, src=url, ingest=ingest)
        _copy_dicom(unpacked, tmp / "dicom", case=case, series_uid=series_uid)
        shutil.rmtree(unpacked)
        download_to.unlink()
    else:
        download_to.rename(tmp / _volume_name(name, url, case))


def fetch_case(
    case: dict,
    out_dir: Path,
    manifest: Path,
    phantom: dict,
    timeout_s: float = 60,
    ingest: dict | None = None,
) -> None:
    """Fetch one case-sheet row into ``out_dir`` (atomic) and write ``manifest`` last.

    ``ingest`` holds the limits (``max_download_bytes``, ``max_unpacked_bytes``,
    ``max_voxels``; see ``ctseg.core.limits``).
    """
    out_dir, manifest = Path(out_dir), Path(manifest)
    name = _field(case, "case")
    if not name:
        raise InputError("case-sheet row has no case id")
    source = _field(case, "source").lower()
    location = _field(case, "location")
    if source not in SOURCES:
        raise InputError(
            f"unknown source kind {source!r}; choose from {', '.join(SOURCES)}", case=name
        )
    if not location:
        raise InputError(f"source {source} needs a location", case=name)
    sha = _field(case, "sha256")
    if source == "url" and not sha:
        raise InputError(
            f"url source {location} has no sha256 (mandatory for downloads)",
            path=location,
            case=name,
        )
    series_uid = _field(case, "series_uid")

    with atomic_dir(out_dir) as tmp:
        if source == "phantom":
            try:
                seed = int(location)
            except ValueError as exc:
                raise InputError(
                    f"phantom location must be an integer seed, not {location!r}", case=name
                ) from exc
            from ctseg.phantom import write_phantom_case
            from ctseg.phantom.population import case_params

            params = case_params(phantom, name, seed, str(case.get("family", "") or ""))
            write_phantom_case(tmp, seed, params)
        elif source == "dicom":
            _copy_dicom(Path(location), tmp / "dicom", case=name, series_uid=series_uid)
        elif source in {"nifti", "nrrd"}:
            src = Path(location)
            target = _volume_name(src.name, location, name)
            if (source == "nrrd") != (target == "image.nrrd"):
                raise InputError(
                    f"source {source} but file type {_suffix(src.name)}", path=src, case=name
                )
            if not src.is_file():
                raise InputError("image file does not exist", path=src, case=name)
            _check_header(src, name, "image", ingest)
            _copy_file(src, tmp / target, name, "image")
        else:
            _fetch_url(
                location,
                tmp,
                case=name,
                sha=sha,
                timeout_s=timeout_s,
                series_uid=series_uid,
                ingest=ingest,
            )
        if sha and source != "url" and source != "phantom":
            src = Path(location)
            if src.is_file() and sha256_file(src) != sha.lower():
                raise InputError(
                    f"sha256 mismatch: expected {sha.lower()}, got {sha256_file(src)}",
                    path=src,
                    case=name,
                )

        labels = _field(case, "labels")
        if labels:
            lab = Path(labels)
            suf = _suffix(lab.name)
            target = f"labels{suf}" if suf in RAW_SUFFIXES else None
            if target is None:
                raise InputError(f"unsupported label file type {suf!r}", path=lab, case=name)
            for old in (f"labels{s}" for s in RAW_SUFFIXES):
                (tmp / old).unlink(missing_ok=True)
            if not lab.is_file():
                raise InputError("labels file does not exist", path=lab, case=name)
            _check_header(lab, name, "label map", ingest)
            _copy_file(lab, tmp / target, name, "labels")
        centroids = _field(case, "centroids")
        if centroids:
            _copy_file(Path(centroids), tmp / "centroids.json", name, "centroids")

        files = []
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            files.append(
                {
                    "path": path.relative_to(tmp).as_posix(),
                    "size": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
            )
        if not files:
            raise InputError("fetch produced no files", path=location, case=name)
        record = {"case": name, "source": source, "location": location, "files": files}
        if series_uid:
            record["series_uid"] = series_uid
        # the manifest goes last, after the folder is in place: present manifest = complete case
    write_json(manifest, record)
