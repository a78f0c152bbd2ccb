"""Rule dicom_summary: summary statistics of one raw case as JSON via ctseg.ingest.stats."""

import json
from pathlib import Path

from ctseg.core.atomic import write_text
from ctseg.core.runlog import job
from ctseg.ingest.stats import summarize_raw

with job(snakemake.log[0], case=snakemake.wildcards.case):
    summary = summarize_raw(
        Path(snakemake.input.raw),
        case=snakemake.wildcards.case,
        ingest=dict(snakemake.params.ingest),
    )
    write_text(snakemake.output[0], json.dumps(summary, indent=2) + "\n")
