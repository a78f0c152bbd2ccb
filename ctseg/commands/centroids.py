"""``ctseg centroids LABELS [--label-map NAME] --out centroids.json``: vertebra centroids.

Writes the DESIGN ``centroids.json`` format (world mm, LPS, sorted by label). With
``--label-map`` the ids are first mapped to VerSe; ids the map does not name are dropped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import SimpleITK as sitk

from ctseg.core.errors import ConfigError
from ctseg.core.imageio import read_image_file
from ctseg.core.jsonio import write_json
from ctseg.core.labels import apply_label_map, resolve_label_map
from ctseg.evaluation.centroids import centroids_from_labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labels", type=Path, help="label map (NIfTI/NRRD)")
    parser.add_argument("--label-map", default=None, help="named label map (e.g. totalseg_v2)")
    parser.add_argument("--out", type=Path, required=True, help="output centroids.json")


def run(args: argparse.Namespace) -> int:
    img = read_image_file(args.labels)
    try:
        mapping = resolve_label_map(args.label_map)
    except KeyError as exc:
        raise ConfigError(str(exc)) from exc
    if mapping is not None:
        mapped = sitk.GetImageFromArray(apply_label_map(sitk.GetArrayFromImage(img), mapping))
        mapped.CopyInformation(img)
        img = mapped
    cents = centroids_from_labels(img)
    write_json(args.out, cents)
    print(f"{len(cents)} centroids -> {args.out}")
    return 0
