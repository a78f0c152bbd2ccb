"""TSV tables: the one writer of the library's ``.tsv`` outputs.

Tab-separated, ``\\n`` line ends, a header row of the column names, one row per mapping (keys
outside the columns ignored, missing keys and None as empty cells), written atomically: the
file appears, complete, only when writing succeeded.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ctseg.core.atomic import atomic_path

RowWriter = Callable[[Mapping[str, Any]], None]


@contextmanager
def tsv_rows(
    path: str | os.PathLike,
    columns: Sequence[str],
    *,
    cell: Callable[[Any], object] | None = None,
) -> Iterator[RowWriter]:
    """Write the header of a TSV at ``path`` and yield a function that writes one row.

    ``cell`` formats each value (it also receives None for missing keys); without it the
    ``csv`` module's text is used (``str``, None as an empty cell). The file is written to a
    temporary name and appears under ``path`` when the ``with`` block ends without an error.
    """
    cols = list(columns)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(cols)
        if cell is None:

            def put(row: Mapping[str, Any]) -> None:
                w.writerow([row.get(c) for c in cols])
        else:

            def put(row: Mapping[str, Any]) -> None:
                w.writerow([cell(row.get(c)) for c in cols])

        yield put


def write_tsv(
    path: str | os.PathLike,
    columns: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    *,
    cell: Callable[[Any], object] | None = None,
) -> None:
    """Write ``rows`` as a TSV with ``columns``, atomically (see :func:`tsv_rows`)."""
    with tsv_rows(path, columns, cell=cell) as put:
        for row in rows:
            put(row)
