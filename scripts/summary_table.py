"""Rule summary_table: gather per-case statistics into stats/summary.tsv."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.ingest.stats import write_summary_table

with job(snakemake.log[0]):
    write_summary_table([Path(p) for p in snakemake.input.stats], Path(snakemake.output[0]))
