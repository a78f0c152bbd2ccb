"""Rule check_cube: QC montage and label frequencies of a cube."""

from pathlib import Path

from ctseg.cubes import check_cube
from ctseg.runlog import job

with job(snakemake.log[0]):
    check_cube(Path(snakemake.input.h5), Path(snakemake.output.png), Path(snakemake.output.tsv))
