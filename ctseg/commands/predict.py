"""``ctseg predict MODEL.pt (--ct CT.nii.gz | --drr VIEW.nii.gz ...) --out PRED.nii.gz``.

Volume models write a label map on the CT grid; bone_drr models stack the views along z.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.inference.predict import predict_case


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--ct", type=Path, help="CT volume (vertebrae, metal)")
    src.add_argument("--drr", type=Path, nargs="+", help="DRR views in order (bone_drr)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--case", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip test-time augmentation (default: the experiment's tta_flip)",
    )


def run(args: argparse.Namespace) -> int:
    inputs = (
        {"case": args.case, "ct": str(args.ct)}
        if args.ct
        else {"case": args.case, "drr": [str(p) for p in args.drr]}
    )
    predict_case(args.model, inputs, args.out, device=args.device, tta_flip=args.tta)
    print(args.out)
    return 0
