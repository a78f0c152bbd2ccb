"""Rule predict: sliding-window inference of one case via ctseg.predict."""

from pathlib import Path

import torch

from ctseg.predict import predict_case
from ctseg.runlog import job

torch.set_num_threads(max(1, snakemake.threads))
with job(snakemake.log[0], case=snakemake.wildcards.case):
    predict_case(
        Path(snakemake.input.model),
        dict(snakemake.params.inputs),
        Path(snakemake.output[0]),
        device=snakemake.params.device,
    )
