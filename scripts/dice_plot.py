"""Rule dice_plot: Dice box plot per label."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.report.plots import plot_dice_box

with job(snakemake.log[0]):
    plot_dice_box(Path(snakemake.input.metrics), Path(snakemake.output[0]))
