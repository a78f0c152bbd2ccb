"""Rule overlay_plot: prediction-vs-truth overlays of one test case."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.report.plots import plot_overlays

with job(snakemake.log[0]):
    plot_overlays(
        Path(snakemake.input.ct),
        Path(snakemake.input.truth),
        Path(snakemake.input.pred),
        Path(snakemake.output[0]),
    )
