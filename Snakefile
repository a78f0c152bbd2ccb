"""ctseg: CT scans from raw files to trained segmentation models and a report.

Run `snakemake --cores all` (default phantom cohort) or see README.md.
"""

import gc

from snakemake.utils import min_version

min_version("9.0")

# The library runs from this workflow's own folder (rules/common.smk puts it first on sys.path
# and on the jobs' PYTHONPATH and sets CTSEG_ROOT to it), also when this Snakefile is used as a
# module of another workflow.


# A --configfile on the command line replaces config.yaml instead of merging into it, so that
# a config (tests/configs/tiny.yaml, config.gpu.yaml) lists exactly its own experiments.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "rules/captions/workflow.rst"


# Python's cyclic garbage collector rescans the millions of objects a large DAG holds each time
# they have grown by a quarter: 19 % of the CPU of `snakemake -n --quiet` at 3,000 cases (68.4 s
# with it, 55.5 s without), for nothing, since the DAG lives until the process ends. It is off
# while the DAG is built (about 30 % more memory), then back on for the run itself (`onstart`,
# which a dry run never reaches). Only as the main workflow: Snakemake calls no module's onstart.
if workflow.modifier.is_main_snakefile():
    gc.disable()


onstart:
    gc.enable()


include: "rules/common.smk"


wildcard_constraints:
    case=CASE_ID_PATTERN,
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


# Cheap aggregates and plots run on the node snakemake runs on, never queued on a cluster.
localrules:
    all,
    dataset,
    summary_table,
    metal_summary,
    drr_stack,
    dice_plot,
    centroid_plot,
    report_tables,


rule all:
    default_target: True
    input:
        all_outputs(),
