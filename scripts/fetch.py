"""Rule fetch: plumb the case-sheet row into ctseg.fetch.fetch_case."""

from pathlib import Path

from ctseg.fetch import fetch_case
from ctseg.runlog import job

with job(snakemake.log[0], case=snakemake.wildcards.case):
    fetch_case(
        snakemake.params.case,
        Path(snakemake.output.raw),
        Path(snakemake.output.manifest),
        snakemake.params.phantom,
    )
