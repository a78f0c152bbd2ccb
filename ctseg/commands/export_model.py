"""``ctseg export-model MODEL_DIR --out PKG.zip [--summary eval/summary.tsv]``: a model package
archive (model.pt, plan.json, history, evaluation figures) to move a model between machines."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.inference.package import export_package


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="results/models/<experiment>/ or its model.pt")
    parser.add_argument("--out", type=Path, required=True, help="archive to write (.zip)")
    parser.add_argument(
        "--summary", type=Path, default=None, help="evaluation summary.tsv to include"
    )


def run(args: argparse.Namespace) -> int:
    print(export_package(args.model, args.out, summary=args.summary))
    return 0
