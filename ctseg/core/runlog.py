"""Send a job's stdout, stderr and logging records to its log file.

Workflow jobs run many at once; a per-job log file (Snakemake's ``log:``) is the only place a
user can read why one case failed. Progress bars (tqdm writes to stderr) land there too.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def log_to(path: str | Path | None) -> Iterator[None]:
    """Redirect stdout/stderr and the root logger to ``path`` (append) for the block."""
    if path is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as fh:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        old_level = root.level
        root.setLevel(logging.INFO)
        try:
            yield
        except BaseException:
            traceback.print_exc(file=fh)
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
            sys.stdout, sys.stderr = old_out, old_err


@contextlib.contextmanager
def job(log_path: str | Path | None, *, case: str | None = None) -> Iterator[None]:
    """A workflow job: output to its log, and input errors tagged with the case they hit."""
    from ctseg.core.errors import InputError

    with log_to(log_path):
        try:
            yield
        except InputError as exc:
            if case is None:
                raise
            raise exc.with_case(case) from exc
