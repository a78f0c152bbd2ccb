"""``ctseg import-model PKG.zip --out DIR``: unpack an exported model package and verify that
it loads (format version, plan, weights) before anything uses it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.inference.package import import_package


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder to unpack into")


def run(args: argparse.Namespace) -> int:
    print(import_package(args.archive, args.out))
    return 0
