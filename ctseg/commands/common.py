"""Argument helpers shared by the verbs: ``key=value`` case items and config sections."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.core.errors import ConfigError


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
