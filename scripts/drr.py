"""Rule drr: render every view of one case from one read of its volumes (ctseg.drr.run_drr_views)."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.drr import DrrOutputs, run_drr_views

out = snakemake.output
with job(snakemake.log[0], case=snakemake.wildcards.case):
    run_drr_views(
        Path(snakemake.input.ct),
        Path(snakemake.input.labels),
        Path(snakemake.input.metal),
        [dict(view) for view in snakemake.params.views],
        [
            DrrOutputs(Path(nii), Path(label), Path(png))
            for nii, label, png in zip(out.nii, out.label, out.png, strict=True)
        ],
        energy_kev=snakemake.params.energy_kev,
        min_path_mm=snakemake.params.min_path_mm,
        device=snakemake.params.device,
        case=snakemake.wildcards.case,
    )
