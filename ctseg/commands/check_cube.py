"""``ctseg check-cube CUBE.h5 [--png QC.png] [--tsv LABELS.tsv]``: QC montage and label table."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.training.cubes import check_cube


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cube", type=Path)
    parser.add_argument("--png", type=Path, default=None, help="montage (default: CUBE_qc.png)")
    parser.add_argument(
        "--tsv", type=Path, default=None, help="label frequencies (default: CUBE_labels.tsv)"
    )


def run(args: argparse.Namespace) -> int:
    import h5py

    from ctseg.core.errors import InputError

    if not args.cube.is_file():
        raise InputError("cube not found", path=args.cube)
    if not h5py.is_hdf5(args.cube):
        raise InputError("not an HDF5 cube file", path=args.cube)
    stem = args.cube.with_suffix("")
    png = args.png or stem.with_name(stem.name + "_qc.png")
    tsv = args.tsv or stem.with_name(stem.name + "_labels.tsv")
    check_cube(args.cube, png, tsv)
    print(f"{png}\n{tsv}")
    return 0
