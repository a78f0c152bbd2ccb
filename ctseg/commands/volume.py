"""``ctseg volume INPUT --out ct.nii.gz [--labels L] [--labels-out ...]``: scan to NIfTI.

INPUT is a raw case folder (``dicom/`` or ``image.*`` inside), a DICOM folder, a NIfTI or an
NRRD. Writes int16 HU on the source geometry; with labels, a uint8 label map checked against
(or, with ``--resample-labels``, resampled onto) the CT grid, and centroids.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from ctseg.core.errors import ConfigError, InputError
from ctseg.core.labels import resolve_label_map
from ctseg.ingest.volume import build_volume, find_raw_source


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


def _link(src: Path, dest: Path) -> None:
    try:
        dest.symlink_to(src.resolve(), target_is_directory=src.is_dir())
    except OSError:
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)


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
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        try:
            find_raw_source(args.input)
            is_raw_case = args.input.is_dir()
        except InputError:
            is_raw_case = False
        if is_raw_case and args.labels is None:
            raw = args.input
        else:
            src = args.input
            if is_raw_case:
                src = find_raw_source(args.input)
            name = src.name.lower()
            target = (
                "dicom"
                if src.is_dir()
                else (
                    "image.nrrd"
                    if name.endswith(".nrrd")
                    else ("image.nii" if name.endswith(".nii") else "image.nii.gz")
                )
            )
            _link(src, raw / target)
            if args.labels is not None:
                lname = (
                    "labels.nrrd"
                    if args.labels.name.lower().endswith(".nrrd")
                    else (
                        "labels.nii"
                        if args.labels.name.lower().endswith(".nii")
                        else "labels.nii.gz"
                    )
                )
                _link(args.labels, raw / lname)
        build_volume(
            raw, args.out, labels_out, centroids_out, case=case, label_map=label_map, ingest=ingest
        )
    print(f"{case}: {args.out}, {labels_out}, {centroids_out}")
    return 0
