"""Rule check_cube: QC montage and label frequencies of a cube."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.training.cubes import check_cube

with job(snakemake.log[0]):
    check_cube(Path(snakemake.input.h5), Path(snakemake.output.png), Path(snakemake.output.tsv))
