"""Rule predict_centroids: a centroid-only model's centroids of one case via ctseg.localisation."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.localisation.predict import predict_centroids_case

with job(snakemake.log[0], case=snakemake.wildcards.case):
    predict_centroids_case(
        Path(snakemake.input.model),
        Path(snakemake.input.ct),
        Path(snakemake.output[0]),
        case=snakemake.wildcards.case,
        device=snakemake.params.device,
    )
