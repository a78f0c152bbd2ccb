"""Rule to_volume: raw case -> ct.nii.gz, labels.nii.gz, centroids.json via ctseg.ingest.volume."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.ingest.volume import build_volume

with job(snakemake.log[0], case=snakemake.wildcards.case):
    build_volume(
        Path(snakemake.input.raw),
        Path(snakemake.output.ct),
        Path(snakemake.output.labels),
        Path(snakemake.output.centroids),
        case=snakemake.wildcards.case,
        label_map=snakemake.params.label_map,
        ingest=dict(snakemake.params.ingest),
    )
