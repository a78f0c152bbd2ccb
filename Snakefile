"""ctseg: CT scans from raw files to trained segmentation models and a report.

Run `snakemake --cores all` (default phantom cohort) or see README.md.
"""

import functools
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


# Snakemake checks each job's script through its source cache, which parses the script's path
# with smart_open's parse_uri three times per job; smart_open (7.x to 9.x) builds a new
# namedtuple class on every call: 71 us each, 15 s of the 132 s that 10,000 cases took to plan.
# The parse of a string is a pure function of it (and of HOME, fixed for the process), and its
# result an immutable tuple, so it is memoised, process-wide and once; the result is the same
# object type with the same fields (tests/test_scale.py compares it with smart_open's own).
def _memoise_uri_parsing():
    import smart_open

    if not getattr(smart_open.parse_uri, "_ctseg_memoised", False):
        memo = functools.lru_cache(maxsize=4096)(smart_open.parse_uri)
        memo._ctseg_memoised = True
        smart_open.parse_uri = memo


_memoise_uri_parsing()


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
