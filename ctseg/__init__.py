"""ctseg: CT scans from raw files to trained segmentation models and a report.

The library holds every piece of real logic of the workflow; the Snakemake rules only wire
files together and the scripts only plumb arguments into these modules.
"""

__version__ = "0.1.0"
