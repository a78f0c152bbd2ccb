"""ctseg: CT scans from raw files to trained segmentation models and a report.

Run `snakemake --cores all` (default phantom cohort) or see README.md.
"""

import os

from snakemake.utils import min_version

min_version("9.0")

# envs/*.yaml install ctseg editable from ${CTSEG_ROOT} (pip expands it): this checkout.
os.environ.setdefault("CTSEG_ROOT", workflow.basedir)


# A --configfile on the command line replaces config.yaml instead of merging into it, so that
# a config (tests/configs/tiny.yaml, config.gpu.yaml) lists exactly its own experiments.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "rules/captions/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    case=_alternation(CASE_IDS),
    view=_alternation(VIEWS),
    experiment=_alternation(EXPERIMENTS),
    cube=_alternation(CUBES),


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
