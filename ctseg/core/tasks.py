"""The task vocabulary, in one place: what each task reads, what its truth is, which models fit.

Rules, cubes, training, inference and evaluation all ask this registry instead of branching on
task names of their own, so a new task (``centroids``) is one entry here plus its strategy.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctseg.core.errors import ConfigError

#: VerSe ids T1..L5: the default vertebra classes.
DEFAULT_VERTEBRAE: tuple[int, ...] = tuple(range(8, 25))


@dataclass(frozen=True)
class Task:
    name: str
    #: what the network reads: a CT volume ("ct") or the case's DRR views ("drr")
    input_kind: str
    #: the case item key that holds the truth ("labels", "metal", "drr_labels", "centroids")
    truth_key: str
    #: network dimensionalities that fit the input
    dims: tuple[int, ...]
    #: True when classes are VerSe ids (identification along the spine applies)
    vertebrae: bool
    #: True when the task trains from cubes (volume tasks) instead of whole DRR images
    uses_cube: bool


TASKS: dict[str, Task] = {
    "vertebrae": Task("vertebrae", "ct", "labels", (2, 3), True, True),
    "metal": Task("metal", "ct", "metal", (2, 3), False, True),
    "bone_drr": Task("bone_drr", "drr", "drr_labels", (2,), False, False),
    # centroid-only localisation (seed 004): heatmaps of each level's centroid, no label maps
    "centroids": Task("centroids", "ct", "centroids", (3,), True, False),
}


def get_task(name: str, *, where: str = "") -> Task:
    """The registered task ``name``; a ConfigError naming it (and ``where``) otherwise."""
    if name not in TASKS:
        at = f"{where}: " if where else ""
        raise ConfigError(f"{at}unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]
