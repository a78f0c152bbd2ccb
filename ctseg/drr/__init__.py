"""Digitally reconstructed radiographs (DRR): cone-beam line integrals and projected labels.

Modules: ``geometry`` (the view/detector contract), ``attenuation`` (HU -> mu, cited
constants), ``raycast`` (torch ray caster, CPU/CUDA), ``labels`` (longest-path label
projection, binary masks), ``render`` (run_drr, run_drr_views, stack_views, PNG).
"""

from ctseg.drr.attenuation import hu_to_mu
from ctseg.drr.geometry import View, VolumeGeometry, project_points, view_frame
from ctseg.drr.labels import ProjectedLabels, project_binary, project_labels
from ctseg.drr.raycast import raycast
from ctseg.drr.render import (
    DrrOutputs,
    display_image,
    render_view,
    render_views,
    run_drr,
    run_drr_views,
    stack_views,
)

__all__ = [
    "DrrOutputs",
    "ProjectedLabels",
    "View",
    "VolumeGeometry",
    "display_image",
    "hu_to_mu",
    "project_binary",
    "project_labels",
    "project_points",
    "raycast",
    "render_view",
    "render_views",
    "run_drr",
    "run_drr_views",
    "stack_views",
    "view_frame",
]
