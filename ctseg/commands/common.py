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

    data = yaml.safe_load(Path(path).read_text())
    if name is None:
        return dict(data)
    try:
        return dict(data[section][name])
    except KeyError as exc:
        raise ConfigError(f"{path}: no {section}.{name}") from exc
