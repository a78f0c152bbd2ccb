"""Rule cube: build one augmentation cube (HDF5) via ctseg.training.cubes."""

from pathlib import Path

import SimpleITK as sitk

from ctseg.core.runlog import job
from ctseg.training.cubes import build_cube

sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, snakemake.threads))
with job(snakemake.log[0]):
    build_cube(
        list(snakemake.params.cases),
        Path(snakemake.output[0]),
        dict(snakemake.params.recipe),
        seed=int(snakemake.params.seed),
    )
