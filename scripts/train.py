"""Rule train: train one experiment via ctseg.training.train."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.training.train import train_experiment

with job(snakemake.log[0]):
    train_experiment(
        dict(snakemake.params.experiment),
        dict(snakemake.params.train_data),
        dict(snakemake.params.val_data),
        Path(snakemake.params.out_dir),
        seed=int(snakemake.params.seed),
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
