"""Rule dicom_summary: summary statistics of one raw case as JSON via ctseg.ingest.stats."""

from pathlib import Path

from ctseg.core.jsonio import write_json
from ctseg.core.runlog import job
from ctseg.ingest.stats import summarize_raw

with job(snakemake.log[0], case=snakemake.wildcards.case):
    summary = summarize_raw(
        Path(snakemake.input.raw),
        case=snakemake.wildcards.case,
        ingest=dict(snakemake.params.ingest),
    )
    write_json(snakemake.output[0], summary, indent=2)
