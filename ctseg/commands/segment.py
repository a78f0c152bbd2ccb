"""``ctseg segment INPUT... --model PKG --out DIR [--fast] [--float32] [--device auto]``.

Segment new scans (DICOM folders, NIfTI, NRRD) with a trained model package, loaded once. Each
input gets ``DIR/<name>/`` with the label map on its own grid and the standard outputs; an input
that fails is reported and the others go on (exit code 1 when any failed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctseg.inference.segment import segment_inputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", type=Path, nargs="+", help="DICOM folders, NIfTI or NRRD files")
    parser.add_argument("--model", type=Path, required=True, help="model.pt or its folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fast", action="store_true", help="skip test-time augmentation")
    parser.add_argument(
        "--float32",
        action="store_true",
        help="run the network in float32 on a CPU even where the model trained in bf16",
    )
    parser.add_argument("--series-uid", default=None, help="series to take from DICOM folders")
    parser.add_argument(
        "--localiser",
        type=Path,
        default=None,
        help="centroid localiser package (task centroids) that names the vertebra levels",
    )


def run(args: argparse.Namespace) -> int:
    results = segment_inputs(
        args.inputs,
        args.model,
        args.out,
        device=args.device,
        fast=args.fast,
        series_uid=args.series_uid,
        localiser=args.localiser,
        float32=args.float32,
    )
    failed = [r for r in results if r.error]
    for r in results:
        if r.error is None:
            print(r.out_dir)
    for r in failed:
        print(f"ctseg segment: failed: {r.error}", file=sys.stderr)
    if failed:
        print(f"ctseg segment: {len(failed)} of {len(results)} inputs failed", file=sys.stderr)
    return 1 if failed else 0
