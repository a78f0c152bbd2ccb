"""Rule metal_summary: gather per-case metal JSON into metal/summary.tsv."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.metal import write_summary_table

with job(snakemake.log[0]):
    write_summary_table([Path(p) for p in snakemake.input.json], Path(snakemake.output[0]))
