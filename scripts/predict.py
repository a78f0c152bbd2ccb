"""Rule predict: sliding-window inference of one case via ctseg.inference.predict."""

from pathlib import Path

import torch

from ctseg.core.runlog import job
from ctseg.inference.predict import predict_case

torch.set_num_threads(max(1, snakemake.threads))
with job(snakemake.log[0], case=snakemake.wildcards.case):
    predict_case(
        Path(snakemake.input.model),
        dict(snakemake.params.inputs),
        Path(snakemake.output[0]),
        device=snakemake.params.device,
        centroids=Path(snakemake.input.centroids)
        if "centroids" in snakemake.input.keys()
        else None,
    )
