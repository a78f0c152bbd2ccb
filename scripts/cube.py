"""Rule cube: build one augmentation cube (HDF5) via ctseg.cubes."""

from pathlib import Path

import SimpleITK as sitk

from ctseg.cubes import build_cube
from ctseg.runlog import job

sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, snakemake.threads))
with job(snakemake.log[0]):
    build_cube(
        list(snakemake.params.cases),
        Path(snakemake.output[0]),
        dict(snakemake.params.recipe),
        seed=int(snakemake.params.seed),
    )
