"""Rules train and train_stage: train one experiment via ctseg.training.train.

``train_stage`` (a centroid localiser's independent stages, side by side): the stage's weights
stay in its resumable checkpoint under the experiment's model folder, so a failed or killed job
keeps them; its output is a small JSON written only once the stage has finished, which the
experiment's ``train`` job waits for before it packages every stage into model.pt.
"""

import time
from pathlib import Path

from ctseg.core.jsonio import write_json
from ctseg.core.runlog import job
from ctseg.training.train import train_experiment

stage = snakemake.wildcards.get("stage")
with job(snakemake.log[0]):
    t0 = time.perf_counter()
    train_experiment(
        dict(snakemake.params.experiment),
        dict(snakemake.params.train_data),
        dict(snakemake.params.val_data),
        Path(snakemake.params.out_dir),
        seed=int(snakemake.params.seed),
        device=snakemake.params.device,
        threads=snakemake.threads,
        stage=stage,
    )
    if stage is not None:
        seconds = round(time.perf_counter() - t0, 1)
        write_json(snakemake.output[0], {"stage": stage, "seconds": seconds})
