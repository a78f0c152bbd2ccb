"""Synthetic CT with a labelled spine: the workflow's embedded default data.

The phantom lets the whole workflow run (and be tested against exact truth) without any patient
data. It is built in world millimetres (DICOM patient coordinates, LPS: +x patient left,
+y posterior, +z superior; supine, so the spine is posterior and anterior is -y) and then
sampled on any grid, so size, spacing, field of view and orientation are free parameters while
the anatomy stays where it is.

Anatomy, noise-free HU (classes in :class:`Tissue`):

* air -1000; a carbon-fibre patient table under the back (shells 150 HU, foam core -500, so
  metal thresholds never pick it up);
* body: trunk ellipse narrowing into the neck above T1, subcutaneous fat -100 around muscle /
  soft tissue 40, a liver 60, bowel gas pockets -950, lungs -850 from the T1 top to the T11
  centre above a diaphragm dome; a head (scalp, 7 mm skull, brain 35) just above C1;
* the whole spine C1-C7, T1-T12, L1-L5 and the sacrum along a curved centreline (cervical
  lordosis, thoracic kyphosis, lumbar lordosis, scoliosis), sized per level; C1 is a ring
  without a body, C2 carries the dens, the sacrum is a tilted, tapering wedge with alae;
  vertebral cortex 1100-1400 HU (shell = max(1.5 mm, largest voxel side)), cancellous 210-290;
* transitional anatomy on request: an L6 (VerSe id 25) between L5 and the sacrum, a T13
  (VerSe id 28) with a 13th rib pair, or T12 without ribs;
* discs 90 HU, the canal CSF 15 HU; ribs at every thoracic level (ending at T12), the pelvis
  (iliac wings, rami, femoral heads) and skull as bone that is never a vertebra label;
* optional titanium pedicle screws with tulip heads (7000 HU) and rods.

Truth: ``labels`` gives every bone voxel of a *visible* level its VerSe id. A level is visible
when more than half of its voxels lie inside the grid; the bone of a partly cut level that is
not visible stays in the image but is labelled 0, so the label map never names a level that
the scan does not really show. Centroids (centroids.json) are the centre of mass of each
visible level's label voxels, in world mm. ``metal`` is the implant geometry before blur and
noise; implants never change labels. A Gaussian PSF (``blur_mm`` = sigma) and in-plane
correlated noise (``noise_hu`` = std) come last, then the lossless reorientation into the
stored ``orientation``.

Two ways to place the grid: ``fit=True`` (default, the original behaviour) centres the run
``first_level``-``last_level`` and shrinks the anatomy until the run fits the grid;
``fit=False`` keeps the anatomy at ``body_scale`` in fixed world coordinates and the grid crops
it, which is what :func:`sample_case` (the population sampler) produces.

All random choices come from ``numpy.random.default_rng(seed)`` with a fixed number of draws,
so the same seed gives the same anatomy on any grid and the same bytes on the same grid.

Modules: ``params`` (parameters, tissues, level sequence), ``orientation`` (48 axis codes),
``grid``, ``layout`` (sizes, curves, frames), ``vertebra`` (shapes), ``torso``, ``skeleton``
(vertebrae, visibility, discs, ribs, pelvis), ``implants``, ``generate``, ``writer``,
``population`` (the sampler).
"""

from ctseg.ingest.dicomwrite import write_dicom_series
from ctseg.phantom.generate import Phantom, centroids_of, generate
from ctseg.phantom.orientation import ORIENTATIONS, orientation_matrix, reorient
from ctseg.phantom.params import TISSUE_HU, PhantomParams, Tissue, spine_ids
from ctseg.phantom.population import PopulationParams, crop_to_run, sample_case
from ctseg.phantom.writer import centroids_json, write_phantom_case

__all__ = [
    "ORIENTATIONS",
    "Phantom",
    "PhantomParams",
    "PopulationParams",
    "Tissue",
    "TISSUE_HU",
    "centroids_json",
    "crop_to_run",
    "centroids_of",
    "generate",
    "orientation_matrix",
    "reorient",
    "sample_case",
    "spine_ids",
    "write_dicom_series",
    "write_phantom_case",
]
