"""``ctseg phantom OUT_DIR``: write one synthetic torso CT case (DICOM series + truth)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options mirror ctseg.phantom.PhantomParams; omitted ones keep its defaults."""
    parser.add_argument("out_dir", type=Path, help="case folder to write (replaced whole)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"))
    parser.add_argument("--implants", nargs="*", default=[], metavar="LEVEL")
    parser.add_argument("--first", default="T1", help="most superior level (default T1)")
    parser.add_argument("--last", default="L5", help="most inferior level (default L5)")
    parser.add_argument("--noise", type=float, help="noise std in HU")
    parser.add_argument("--blur", type=float, help="PSF sigma in mm")
    parser.add_argument("--kyphosis", type=float, help="mm (default: drawn from the seed)")
    parser.add_argument("--lordosis", type=float, help="mm (default: drawn from the seed)")
    parser.add_argument("--scoliosis", type=float, help="mm (default: drawn from the seed)")
    parser.add_argument("--body-scale", type=float, help="default: drawn from the seed")


def run(args: argparse.Namespace) -> int:
    from ctseg.phantom import write_phantom_case

    params: dict = {"first_level": args.first, "last_level": args.last, "implants": args.implants}
    optional = {
        "shape": args.shape,
        "spacing_mm": args.spacing,
        "noise_hu": args.noise,
        "blur_mm": args.blur,
        "kyphosis_mm": args.kyphosis,
        "lordosis_mm": args.lordosis,
        "scoliosis_mm": args.scoliosis,
        "body_scale": args.body_scale,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    try:
        write_phantom_case(args.out_dir, args.seed, params)
    except ValueError as exc:
        from ctseg.core.errors import ConfigError

        raise ConfigError(str(exc)) from exc
    print(f"wrote phantom case seed={args.seed} to {args.out_dir}")
    return 0
