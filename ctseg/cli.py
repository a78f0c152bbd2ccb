"""The ``ctseg`` command: each workflow stage runnable on one file outside Snakemake.

Each verb lives in ``ctseg.commands.<module>`` with two functions, ``add_arguments(parser)``
and ``run(args) -> int``; modules are imported only when their verb is used so that
``ctseg stats`` does not pay for importing torch. A user error (``CtsegError``: bad input,
bad configuration; or an ``OSError`` on a user-given path) exits with status 1 and one line
on stderr naming the file, never a traceback; argparse usage errors exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ctseg.core.errors import CtsegError

#: verb -> (module under ctseg.commands, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "phantom": ("phantom", "write a synthetic torso CT phantom as a DICOM series with truth"),
    "fetch": ("fetch", "fetch one case's raw scan (phantom, dicom, nifti, nrrd, url)"),
    "volume": ("volume", "convert a raw scan (and labels) to NIfTI on the CT grid"),
    "stats": ("stats", "DICOM / volume summary statistics as JSON"),
    "metal": ("metal", "label metal implants by HU threshold inside the body"),
    "drr": ("drr", "render a digitally reconstructed radiograph (line integrals)"),
    "cube": ("cube", "build an augmentation cube (HDF5) from volumes and labels"),
    "check-cube": ("check_cube", "QC montage and label frequencies of a cube"),
    "train": ("train", "train a 2D/3D U-Net experiment"),
    "predict": ("predict", "sliding-window inference on one volume"),
    "segment": ("segment", "segment new scans with a model package (outputs a viewer opens)"),
    "export-model": ("export_model", "write a model package archive to move a model"),
    "import-model": ("import_model", "unpack and verify a model package archive"),
    "metrics": ("metrics", "Dice, Jaccard, ASD, ASSD, HD95 per label of a prediction"),
    "centroids": ("centroids", "vertebra centroids (world mm, LPS) of a label map"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctseg", description=__doc__.splitlines()[0])
    parser.add_argument("-V", "--version", action="store_true", help="print the version")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_module, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        from ctseg import __version__

        print(f"ctseg {__version__}")
        return 0
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in VERBS:
        parser = build_parser()
        if argv and argv[0] not in {"-h", "--help"}:
            parser.error(f"unknown verb {argv[0]!r}; choose from {', '.join(VERBS)}")
        parser.print_help()
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    module = importlib.import_module(f"ctseg.commands.{VERBS[verb][0]}")
    parser = argparse.ArgumentParser(prog=f"ctseg {verb}", description=VERBS[verb][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except CtsegError as exc:
        one_line = " ".join(str(exc).splitlines())
        print(f"ctseg {verb}: error: {one_line}", file=sys.stderr)
        return 1
    except OSError as exc:  # the file system refused a user-given path (permissions, disk full)
        where = f" {str(exc.filename)!r}" if exc.filename else ""
        print(f"ctseg {verb}: error: file{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
