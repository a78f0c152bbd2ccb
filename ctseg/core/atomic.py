"""Atomic file and directory writes.

A killed job must never leave a file that looks complete: everything is written under a
temporary name in the destination directory (same filesystem) and renamed into place only when
fully written. ``os.replace`` is atomic on POSIX for files; directories are renamed after any
previous copy is moved aside.

A job killed by SIGKILL cannot clean up, so its hidden temporaries (``.NAME.XXXXXXXX.tmp``
and ``.NAME.old`` next to the output ``NAME``) would stay forever; every atomic write of
``NAME`` first removes those left by earlier, dead writers of the same output (Snakemake never
runs two jobs for one output at once). :func:`atomic_paths` writes several outputs of one job
and renames them together at the end, so a failure in any of them leaves none behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: characters of the random part of ``tempfile.mkdtemp`` names
_RAND = "[a-z0-9_]{8}"


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Hidden temporaries a killed writer of ``path`` left next to it (exactly its own names:
    ``.NAME.XXXXXXXX.tmp`` and ``.NAME.old``, never another output's)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:{_RAND}\.tmp|old)$")
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete :func:`stale_temporaries` of ``path``; returns what was removed."""
    removed = stale_temporaries(path)
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return removed


def _tmp_name(path: Path, is_dir: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # Keep the full suffix (.nii.gz) so writers that dispatch on extension still work.
    fd_dir = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if is_dir:
        return Path(fd_dir)
    return Path(fd_dir) / path.name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with the same file name; rename it onto ``path`` on success."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"writer produced no file for {path}")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; it replaces ``path`` (if any) only on success."""
    path = Path(path)
    tmp = _tmp_name(path, is_dir=True)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary paths for several files of one job, renamed onto ``paths`` together.

    Nothing is renamed until the block finishes without error and every temporary exists, so
    a failure while writing any one output leaves none of them (old or new) half-replaced.
    """
    finals = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        for p in finals:
            tmps.append(_tmp_name(p))
        yield tmps
        missing = [str(f) for f, t in zip(finals, tmps, strict=True) if not t.exists()]
        if missing:
            raise FileNotFoundError(f"writer produced no file for {', '.join(missing)}")
        for final, tmp in zip(finals, tmps, strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in tmps:
            shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
