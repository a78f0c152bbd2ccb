"""Rule drr: render every view of one case via ctseg.drr.run_drr."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.drr import run_drr

out = snakemake.output
with job(snakemake.log[0], case=snakemake.wildcards.case):
    for view, nii, label, png in zip(
        snakemake.params.views, out.nii, out.label, out.png, strict=True
    ):
        run_drr(
            Path(snakemake.input.ct),
            Path(snakemake.input.labels),
            Path(snakemake.input.metal),
            dict(view),
            Path(nii),
            Path(label),
            Path(png),
            energy_kev=snakemake.params.energy_kev,
            min_path_mm=snakemake.params.min_path_mm,
            device=snakemake.params.device,
            case=snakemake.wildcards.case,
        )
