"""Rule case_outputs: the standard outputs of one prediction via ctseg.formats.outputs."""

from pathlib import Path

from ctseg.core.runlog import job
from ctseg.formats.outputs import write_case_outputs_from_files

with job(snakemake.log[0], case=snakemake.wildcards.case):
    write_case_outputs_from_files(
        Path(snakemake.input.prediction),
        Path(snakemake.input.ct),
        Path(snakemake.params.out_dir),
        dicom_dir=Path(snakemake.params.dicom) if snakemake.params.dicom else None,
        trained_ids=snakemake.params.trained_ids,
        case=snakemake.wildcards.case,
        localiser=Path(snakemake.input.localiser)
        if "localiser" in snakemake.input.keys()
        else None,
    )
