"""Rule report_tables: results/report/summary.md from every stage's tables (ctseg.report.tables)."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.report.tables import write_summary_md

with job(snakemake.log[0]):
    write_summary_md(
        Path(snakemake.output[0]),
        stats_tsv=Path(snakemake.input.stats),
        metal_tsv=Path(snakemake.input.metal),
        experiments=dict(snakemake.params.experiments),
        excluded=dict(snakemake.params.excluded),
        families=dict(snakemake.params.families),
    )
