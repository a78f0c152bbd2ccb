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

    from ctseg.core.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file {str(path)!r}: not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        why = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"file {str(path)!r}: not valid YAML/JSON{where} ({why})") from exc
    if name is None:
        if not isinstance(data, dict):
            raise ConfigError(f"file {str(path)!r}: expected a mapping, got {type(data).__name__}")
        return dict(data)
    try:
        return dict(data[section][name])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"file {str(path)!r}: no {section}.{name}") from exc


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
