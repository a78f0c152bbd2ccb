"""``ctseg fetch CASE SOURCE LOCATION --out raw/CASE [--sha256 H] [--labels L]``: fetch one case."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctseg.ingest.fetch import SOURCES, fetch_case


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", help="case id")
    parser.add_argument("source", choices=SOURCES)
    parser.add_argument("location", help="phantom seed, path or URL")
    parser.add_argument("--out", type=Path, required=True, help="raw case folder to create")
    parser.add_argument("--manifest", type=Path, default=None, help="default: OUT.manifest.json")
    parser.add_argument("--sha256", default="", help="required for url sources")
    parser.add_argument("--labels", default="")
    parser.add_argument("--centroids", default="")
    parser.add_argument("--series-uid", default="")
    parser.add_argument("--timeout", type=float, default=60.0)


def run(args: argparse.Namespace) -> int:
    row = {
        "case": args.case,
        "source": args.source,
        "location": args.location,
        "sha256": args.sha256,
        "labels": args.labels,
        "centroids": args.centroids,
        "series_uid": args.series_uid,
    }
    manifest = args.manifest or args.out.with_name(args.out.name + ".manifest.json")
    fetch_case(row, args.out, manifest, {}, timeout_s=args.timeout)
    print(f"{args.case}: {args.out} ({manifest})")
    return 0
