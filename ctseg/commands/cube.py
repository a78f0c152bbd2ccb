"""``ctseg cube --item case=NAME,ct=CT,labels=LAB[,metal=MASK] ... --recipe R.yaml --out C.h5``.

Build one augmentation cube outside the workflow. The recipe comes from a YAML/JSON file
holding the recipe itself, or from a config file plus ``--name`` (``cubes[NAME]``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.training.cubes import build_cube


def parse_item(text: str) -> dict:
    """``key=value,key=value`` -> dict; list values are separated by ``+``."""
    item: dict = {}
    for part in text.split(","):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected key=value, got {part!r}")
        key, value = part.split("=", 1)
        item[key.strip()] = value.split("+") if "+" in value else value
    return item


def load_section(path: Path, section: str | None, name: str | None) -> dict:
    """Read a YAML/JSON mapping; with ``name``, return ``data[section][name]``."""
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if name is None:
        return dict(data)
    try:
        return dict(data[section][name])
    except KeyError as exc:
        raise SystemExit(f"{path}: no {section}.{name}") from exc


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
