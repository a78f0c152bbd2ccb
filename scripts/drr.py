"""Rule drr: render one view of one case via ctseg.drr.run_drr."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.drr import run_drr

with job(snakemake.log[0], case=snakemake.wildcards.case):
    run_drr(
        Path(snakemake.input.ct),
        Path(snakemake.input.labels),
        Path(snakemake.input.metal),
        dict(snakemake.params.view),
        Path(snakemake.output.nii),
        Path(snakemake.output.label),
        Path(snakemake.output.png),
        energy_kev=snakemake.params.energy_kev,
        min_path_mm=snakemake.params.min_path_mm,
        device=snakemake.params.device,
    )
