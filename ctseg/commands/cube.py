"""``ctseg cube --item case=NAME,ct=CT,labels=LAB[,metal=MASK] ... --recipe R.yaml --out C.h5``.

Build one augmentation cube outside the workflow. The recipe comes from a YAML/JSON file
holding the recipe itself, or from a config file plus ``--name`` (``cubes[NAME]``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.commands.common import load_section, parse_item
from ctseg.training.cubes import build_cube


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--item",
        type=parse_item,
        action="append",
        required=True,
        help="case=..,ct=..,labels=..,metal=.. (repeat per case)",
    )
    parser.add_argument(
        "--recipe", type=Path, required=True, help="recipe YAML/JSON, or config.yaml with --name"
    )
    parser.add_argument("--name", default=None, help="cube name inside a config file's 'cubes'")
    parser.add_argument("--out", type=Path, required=True, help="output HDF5")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    recipe = load_section(args.recipe, "cubes", args.name)
    build_cube(args.item, args.out, recipe, seed=args.seed)
    return 0
