"""Rule evaluate: metrics, centroid errors and summary of one experiment via ctseg.evaluation.evaluate."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.evaluation.evaluate import evaluate_experiment

with job(snakemake.log[0]):
    evaluate_experiment(
        list(snakemake.params.pairs),
        Path(snakemake.output.metrics),
        Path(snakemake.output.centroids),
        Path(snakemake.output.summary),
        task=snakemake.params.task,
    )
