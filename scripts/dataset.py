"""Rule dataset: the files an experiment trains and validates on, as one manifest TSV."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.training.manifest import write_manifest

with job(snakemake.log[0]):
    write_manifest(
        dict(snakemake.params.train_data),
        dict(snakemake.params.val_data),
        Path(snakemake.output[0]),
    )
