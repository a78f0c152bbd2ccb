"""Rule dice_plot: Dice box plot per label."""

from pathlib import Path

from ctseg.report import plot_dice_box
from ctseg.runlog import job

with job(snakemake.log[0]):
    plot_dice_box(Path(snakemake.input.metrics), Path(snakemake.output[0]))
