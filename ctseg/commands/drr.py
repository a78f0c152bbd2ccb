"""``ctseg drr``: render one DRR view of a CT (DICOM folder, NIfTI or NRRD)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="CT: DICOM folder, NIfTI or NRRD")
    parser.add_argument("--out", type=Path, required=True, help="line integrals (.nii.gz)")
    parser.add_argument(
        "--angle", type=float, default=0.0, help="degrees, 0 = AP, 90 = from the left"
    )
    parser.add_argument("--sdd", type=float, default=1000.0, help="source-detector distance (mm)")
    parser.add_argument("--sid", type=float, default=850.0, help="source-isocentre distance (mm)")
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="pixels: N or COLS ROWS")
    parser.add_argument("--spacing", type=float, nargs="+", default=[2.1], help="mm: S or COL ROW")
    parser.add_argument("--png", type=Path, default=None, help="display PNG")
    parser.add_argument("--labels", type=Path, default=None, help="label map on the CT grid")
    parser.add_argument("--label-out", type=Path, default=None, help="projected labels (.nii.gz)")
    parser.add_argument("--metal", type=Path, default=None, help="metal mask on the CT grid")
    parser.add_argument("--energy", type=float, default=70.0, help="effective energy (keV)")
    parser.add_argument("--min-path", type=float, default=2.0, help="min path for a label (mm)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--name", default="view", help="view name (progress bar)")


def _one_or_two(values: list, what: str) -> object:
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return list(values)
    raise SystemExit(f"ctseg drr: --{what} takes 1 or 2 values")


def run(args: argparse.Namespace) -> int:
    from ctseg.core.errors import InputError
    from ctseg.drr import run_drr

    if args.label_out is not None and args.labels is None:
        raise InputError("--label-out needs --labels")
    view = {
        "name": args.name,
        "angle_deg": args.angle,
        "sdd_mm": args.sdd,
        "sid_mm": args.sid,
        "size_px": _one_or_two(args.size, "size"),
        "spacing_mm": _one_or_two(args.spacing, "spacing"),
    }
    run_drr(
        args.input,
        args.labels,
        args.metal,
        view,
        args.out,
        args.label_out,
        args.png,
        energy_kev=args.energy,
        min_path_mm=args.min_path,
        device=args.device,
    )
    return 0
