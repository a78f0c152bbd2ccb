"""``ctseg metal INPUT --out MASK.nii.gz [--threshold 3000] [--json OUT]``: label metal implants.

INPUT is a CT NIfTI/NRRD or a DICOM folder. Writes the uint8 mask on the CT grid, a JSON
summary (default: next to the mask) and a QC PNG (default: MASK stem + ``_qc.png``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.core.imageio import RAW_SUFFIXES
from ctseg.core.jsonio import dumps
from ctseg.metal import run_metal


def _stem(path: Path) -> str:
    name = path.name
    for suf in RAW_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return path.stem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="CT (NIfTI, NRRD or DICOM folder)")
    parser.add_argument("--out", type=Path, required=True, help="output mask (.nii.gz)")
    parser.add_argument(
        "--threshold", type=float, default=3000.0, help="HU threshold (default 3000)"
    )
    parser.add_argument("--min-size", type=int, default=1, help="smallest component kept (voxels)")
    parser.add_argument("--dilation", type=int, default=0, help="dilation radius (voxels)")
    parser.add_argument("--json", type=Path, default=None, help="summary JSON (default: MASK.json)")
    parser.add_argument("--qc", type=Path, default=None, help="QC PNG (default: MASK_qc.png)")
    parser.add_argument(
        "--slice-pngs", type=Path, default=None, help="folder for one binary PNG per slice"
    )
    parser.add_argument("--case", default=None)


def run(args: argparse.Namespace) -> int:
    stem = _stem(args.out)
    json_out = args.json or args.out.with_name(stem + ".json")
    qc = args.qc or args.out.with_name(stem + "_qc.png")
    info = run_metal(
        args.input,
        args.out,
        json_out,
        qc,
        threshold_hu=args.threshold,
        min_size=args.min_size,
        dilation_vox=args.dilation,
        slice_png_dir=args.slice_pngs,
        case=args.case or stem,
    )
    print(dumps({k: info[k] for k in ("case", "voxels", "volume_mm3", "components")}, indent=None))
    return 0
