"""Rule metal: metal mask, JSON and QC image of one case via ctseg.metal."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.metal import run_metal

with job(snakemake.log[0], case=snakemake.wildcards.case):
    run_metal(
        Path(snakemake.input.ct),
        Path(snakemake.output.mask),
        Path(snakemake.output.json),
        Path(snakemake.output.qc),
        threshold_hu=snakemake.params.threshold_hu,
        min_size=snakemake.params.min_size,
        dilation_vox=snakemake.params.dilation_vox,
        slice_png_dir=Path(snakemake.params.slice_png_dir) if snakemake.params.slice_pngs else None,
        ingest=dict(snakemake.config.get("ingest", {})),  # limits only: no rerun on change
    )
