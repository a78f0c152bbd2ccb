"""Rule drr_stack: stack a case's projected label views into one NIfTI (truth for 2D DRR tasks)."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.drr import stack_views

with job(snakemake.log[0], case=snakemake.wildcards.case):
    stack_views([Path(p) for p in snakemake.input.labels], Path(snakemake.output[0]))
