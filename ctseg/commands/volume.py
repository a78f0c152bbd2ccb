"""``ctseg volume INPUT --out ct.nii.gz [--labels L] [--labels-out ...]``: scan to NIfTI.

INPUT is a raw case folder (``dicom/`` or ``image.*`` inside), a DICOM folder, a NIfTI or an
NRRD. Writes int16 HU on the source geometry; with labels, a uint8 label map checked against
(or, with ``--resample-labels``, resampled onto) the CT grid, and centroids.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.core.errors import ConfigError, InputError
from ctseg.core.labels import resolve_label_map
from ctseg.ingest.volume import convert_volume, find_raw_labels, find_raw_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="raw case folder, DICOM folder, NIfTI or NRRD")
    parser.add_argument("--out", type=Path, required=True, help="output ct.nii.gz")
    parser.add_argument(
        "--labels", type=Path, default=None, help="label map to bring onto the CT grid"
    )
    parser.add_argument(
        "--labels-out", type=Path, default=None, help="default: labels.nii.gz next to --out"
    )
    parser.add_argument(
        "--centroids-out", type=Path, default=None, help="default: centroids.json next to --out"
    )
    parser.add_argument("--label-map", default=None, help="named label map, e.g. totalseg_v2")
    parser.add_argument("--case", default=None)
    parser.add_argument("--resample-labels", action="store_true")
    parser.add_argument("--uneven-spacing", choices=["error", "resample"], default="error")
    parser.add_argument("--gantry-tilt", choices=["error", "resample"], default="error")


def _sources(args: argparse.Namespace) -> tuple[Path, Path | None, Path | None]:
    """(scan, labels, centroids) as the user's own paths: a raw case folder is looked into,
    anything else is the scan itself. No copy is made, so every error names the user's file."""
    src = args.input
    labels, centroids = args.labels, None
    if src.is_dir():
        try:
            found = find_raw_source(src)
        except InputError:
            found = None  # a plain DICOM folder
        if found is not None:
            if labels is None:
                labels = find_raw_labels(src)
                if (src / "centroids.json").is_file():
                    centroids = src / "centroids.json"
            src = found
    elif not src.exists():
        raise InputError("input does not exist", path=src)
    return src, labels, centroids


def run(args: argparse.Namespace) -> int:
    try:
        label_map = resolve_label_map(args.label_map)
    except KeyError as exc:
        raise ConfigError(str(exc)) from exc
    ingest = {
        "uneven_spacing": args.uneven_spacing,
        "gantry_tilt": args.gantry_tilt,
        "resample_labels": args.resample_labels,
    }
    out_dir = args.out.parent
    labels_out = args.labels_out or out_dir / "labels.nii.gz"
    centroids_out = args.centroids_out or out_dir / "centroids.json"
    case = args.case or args.input.name.split(".")[0]
    src, labels, centroids = _sources(args)
    convert_volume(
        src,
        labels,
        centroids,
        args.out,
        labels_out,
        centroids_out,
        case=case,
        label_map=label_map,
        ingest=ingest,
    )
    print(f"{case}: {args.out}, {labels_out}, {centroids_out}")
    return 0
