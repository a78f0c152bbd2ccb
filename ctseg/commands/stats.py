"""``ctseg stats INPUT [--json OUT]``: summary statistics of a DICOM folder, NIfTI or NRRD.

Prints one JSON object (or writes it atomically with ``--json``); no patient identifiers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.core.atomic import write_text
from ctseg.core.jsonio import dumps
from ctseg.ingest.stats import summarize_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="DICOM folder, .nii/.nii.gz or .nrrd")
    parser.add_argument(
        "--json", type=Path, default=None, help="write the JSON here instead of stdout"
    )
    parser.add_argument("--case", default=None, help="case id (default: the input's file name)")
    parser.add_argument(
        "--series-uid", default=None, help="series to use in a folder holding several"
    )
    parser.add_argument("--uneven-spacing", choices=["error", "resample"], default="error")
    parser.add_argument("--gantry-tilt", choices=["error", "resample"], default="error")


def run(args: argparse.Namespace) -> int:
    ingest = {"uneven_spacing": args.uneven_spacing, "gantry_tilt": args.gantry_tilt}
    if args.series_uid:
        from ctseg.ingest.stats import summarize_image
        from ctseg.ingest.volume import read_image

        case = args.case or args.input.name.split(".")[0]
        img, meta = read_image(
            args.input, case=case, series_uid=args.series_uid, ingest=ingest, progress=False
        )
        summary = summarize_image(img, meta, case=case)
    else:
        summary = summarize_path(args.input, case=args.case, ingest=ingest)
    text = dumps(summary, indent=2, what=args.json or "stats JSON") + "\n"
    if args.json:
        write_text(args.json, text)
    else:
        print(text, end="")
    return 0
