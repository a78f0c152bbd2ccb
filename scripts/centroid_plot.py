"""Rule centroid_plot: centroid error per vertebra."""

from pathlib import Path

from ctseg.report import plot_centroid_errors
from ctseg.runlog import job

with job(snakemake.log[0]):
    plot_centroid_errors(Path(snakemake.input.centroids), Path(snakemake.output[0]))
