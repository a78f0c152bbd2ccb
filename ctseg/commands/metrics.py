"""``ctseg metrics PRED GT [--label-map NAME] --out metrics.tsv``: metrics per label of one case.

The label map (``--label-map``) is applied to the ground truth only: the prediction comes from
a ctseg model and is already in VerSe ids, while a truth file may come in another convention
(e.g. TotalSegmentator v2). Truth ids the map does not name become background.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.core.errors import ConfigError
from ctseg.core.grid import check_same_grid
from ctseg.core.imageio import read_image_file
from ctseg.core.labels import apply_label_map, resolve_label_map
from ctseg.evaluation.metrics import (
    METRIC_KEYS,
    array_spacing,
    label_array,
    label_metrics,
    write_tsv,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", type=Path, help="predicted label map (NIfTI/NRRD)")
    parser.add_argument("gt", type=Path, help="ground-truth label map on the same grid")
    parser.add_argument(
        "--label-map", default=None, help="named label map applied to GT only (e.g. totalseg_v2)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output TSV, one row per label")


def run(args: argparse.Namespace) -> int:
    pred_img = read_image_file(args.pred)
    gt_img = read_image_file(args.gt)
    check_same_grid(pred_img, gt_img, args.pred, args.gt)
    pred = label_array(pred_img, args.pred)
    gt = label_array(gt_img, args.gt)
    try:
        mapping = resolve_label_map(args.label_map)
    except KeyError as exc:
        raise ConfigError(str(exc)) from exc
    if mapping is not None:
        gt = apply_label_map(gt, mapping)
    rows = label_metrics(pred, gt, array_spacing(gt_img))
    from ctseg.evaluation.centroids import label_name

    for r in rows:
        r["name"] = label_name(r["label"])
    write_tsv(rows, ("label", "name", *METRIC_KEYS), args.out)
    print(f"{len(rows)} labels -> {args.out}")
    return 0
