"""``ctseg train --experiment E.yaml [--name N] (--cube C.h5 | --train-case ...) --val-case ... --out DIR``.

Train one experiment outside the workflow. Cases are ``key=value`` lists: volume tasks
``case=..,ct=..,labels=..,metal=..``; bone_drr ``case=..,drr=a.nii.gz+b.nii.gz,drr_labels=..+..``.
A rerun with the same arguments resumes from ``DIR/checkpoints/last.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.commands.common import load_section, parse_item
from ctseg.core.errors import ConfigError
from ctseg.training.train import train_experiment


def _as_list(case: dict) -> dict:
    for key in ("drr", "drr_labels"):
        if key in case and isinstance(case[key], str):
            case[key] = [case[key]]
    return case


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--experiment",
        type=Path,
        required=True,
        help="experiment YAML/JSON, or config.yaml with --name",
    )
    parser.add_argument(
        "--name", default=None, help="experiment name inside a config file's 'experiments'"
    )
    parser.add_argument("--cube", type=Path, default=None, help="training cube (volume tasks)")
    parser.add_argument(
        "--train-case", type=parse_item, action="append", default=[], help="bone_drr training case"
    )
    parser.add_argument(
        "--val-case", type=parse_item, action="append", default=[], help="validation case"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    experiment = load_section(args.experiment, "experiments", args.name)
    if experiment.get("task") == "bone_drr":
        train_data = {"cases": [_as_list(c) for c in args.train_case]}
    else:
        if args.cube is None:
            raise ConfigError("--cube is required for volume tasks")
        train_data = {"cube": str(args.cube)}
    val_data = {"cases": [_as_list(c) for c in args.val_case]}
    train_experiment(experiment, train_data, val_data, args.out, seed=args.seed, device=args.device)
    print(args.out / "model.pt")
    return 0
