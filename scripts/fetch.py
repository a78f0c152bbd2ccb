"""Rule fetch: plumb the case-sheet row into ctseg.ingest.fetch.fetch_case."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.ingest.fetch import fetch_case

with job(snakemake.log[0], case=snakemake.wildcards.case):
    fetch_case(
        snakemake.params.case,
        Path(snakemake.output.raw),
        Path(snakemake.output.manifest),
        snakemake.params.phantom,
        ingest=dict(snakemake.config.get("ingest", {})),  # limits only: no rerun on change
    )
