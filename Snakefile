"""ctseg: CT scans from raw files to trained segmentation models and a report.

Run `snakemake --cores all` (default phantom cohort) or see README.md.
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "rules/captions/workflow.rst"


include: "rules/common.smk"
include: "rules/fetch.smk"
include: "rules/volume.smk"
include: "rules/metal.smk"
include: "rules/drr.smk"
include: "rules/cube.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
