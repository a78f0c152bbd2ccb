"""The run's report and the workflow's QC figures: every table and plot ctseg draws.

Modules: ``tables`` (``summary.md``, the seeds' tables from this run's TSVs), ``plots`` (the
report's Dice, centroid-error and overlay plots), ``training`` (training's ``loss.png``, an
augmentation cube's QC montage), ``metal`` (metal labelling's QC picture), ``qc_png`` (the QC
picture delivered with every segmented case, see :mod:`ctseg.formats.outputs`).

The names of the former module ``ctseg/report.py`` (the tables' and the report plots') stay
importable from ``ctseg.report`` itself, but the package imports a module only when one of its
names is first used: a stage that draws one figure (training its loss curves) then neither
loads the others' dependencies nor, through ``code_of`` in ``rules/common.smk``, reruns when
they change. Library modules and workflow scripts therefore import from the module
(``from ctseg.report.plots import plot_dice_box``), which is also what ``code_of`` follows.
"""

from __future__ import annotations

import importlib

#: Name once defined by ``ctseg/report.py`` -> the module of this package that defines it now.
_EXPORTS = {
    "NA": "tables",
    "fmt": "tables",
    "fmt_pm": "tables",
    "family_rows": "tables",
    "write_summary_md": "tables",
    "plot_centroid_errors": "plots",
    "plot_dice_box": "plots",
    "plot_overlays": "plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
