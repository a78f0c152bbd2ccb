"""Rule centroid_plot: centroid error per vertebra."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.report.plots import plot_centroid_errors

with job(snakemake.log[0]):
    plot_centroid_errors(Path(snakemake.input.centroids), Path(snakemake.output[0]))
