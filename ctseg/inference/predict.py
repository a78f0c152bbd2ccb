"""Inference: sliding-window prediction, spine-consistent post-processing, prediction files.

Volume tasks: the CT is resampled to the model's spacing, normalised like the cube, segmented
with overlapping windows of the training patch size (overlap 0.5) whose logits are blended with
a Gaussian importance map (nnU-Net: centre voxels of a window are more reliable than its border),
optionally averaged with the left-right flipped prediction (test-time augmentation), decoded
foreground-first (:func:`decode_logits`),
mapped back to VerSe ids (or 0/1), post-processed (vertebrae) and resampled nearest-neighbour
onto the exact CT grid.

bone_drr: each view's line-integral image is pre-processed like in training, segmented as a
whole (padded to a multiple of the network divisor), and the views are stacked along z.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ctseg.core.atomic import atomic_path
from ctseg.core.device import resolve_device
from ctseg.core.errors import InputError
from ctseg.core.imageio import read_image_file
from ctseg.core.labels import spinal_region
from ctseg.core.normalise import hu_to_float
from ctseg.core.orientation import from_canonical, to_canonical
from ctseg.core.resample import resample_onto
from ctseg.inference.downsample import working_image
from ctseg.inference.drr import predict_drr_views
from ctseg.inference.package import load_package
from ctseg.inference.postprocess import (
    classes_to_ids,
    decode_logits,
    labels_from_centroids,
    relabel_along_spine,
)
from ctseg.inference.sliding import slicewise_logits, sliding_window_logits
from ctseg.metal import fill_metal


def _write(image: sitk.Image, out_path: Path) -> None:
    with atomic_path(out_path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def working_grid_logits(
    model: torch.nn.Module, meta: dict, image: np.ndarray, *, device: torch.device, tta: bool
) -> np.ndarray:
    """Logits [C, z, y, x] of a normalised working-grid volume: the 3D sliding window, or the
    2D model slice by slice along its slicing axis; in bf16 on a bf16 CPU where the plan's
    ``cpu_bf16`` says the model trained so."""
    patch = tuple(reversed(meta["patch"]))  # [z, y, x]
    kw = {"device": device, "tta_flip": tta, "cpu_bf16": bool(meta.get("cpu_bf16", False))}
    if meta["dim"] == 2:
        axis = int(meta.get("slice_axis", 0))
        return slicewise_logits(model, image, patch, axis, meta["n_classes"], **kw)
    return sliding_window_logits(model, image, patch, meta["n_classes"], **kw)


def foreground_probability(logits: np.ndarray) -> np.ndarray:
    """P(any foreground class) per voxel: 1 - softmax background."""
    lg = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    return (1.0 - torch.softmax(lg, dim=0)[0]).numpy()


def _foreground_box(prob: np.ndarray, threshold: float, pad: int = 2) -> tuple[slice, ...] | None:
    """Bounding box (working grid) of voxels with foreground probability above ``threshold``."""
    idx = np.argwhere(prob > threshold)
    if len(idx) == 0:
        return None
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, prob.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _index_points(image: sitk.Image, centroids: list[dict]) -> np.ndarray:
    """Centroids' world ``x, y, z`` as continuous [z, y, x] indices of ``image``."""
    return np.asarray(
        [
            image.TransformPhysicalPointToContinuousIndex([float(c[a]) for a in "xyz"])[::-1]
            for c in centroids
        ],
        dtype=float,
    ).reshape(-1, 3)


def labels_onto_grid(
    fg_prob: np.ndarray,
    ids: np.ndarray,
    working: sitk.Image,
    target: sitk.Image,
    *,
    threshold: float = 0.5,
    centroids: list[dict] | None = None,
) -> sitk.Image:
    """Working-grid decision resampled onto ``target`` (the CT's grid, canonical orientation).

    The foreground decision is taken on the target grid from the *linearly interpolated*
    foreground probability (thresholded at 0.5 = the arg-max of background against the summed
    foreground classes, as :func:`decode_logits` decides it), so a 0.8 mm CT gets a 0.8 mm
    boundary instead of 4 mm nearest-neighbour staircases. Which vertebra a foreground voxel
    belongs to comes from the post-processed working-grid ids, extended to the nearest
    labelled voxel (vertebrae touch only across discs, where the probability is low). Only the
    foreground's bounding box is resampled, which keeps a 512 x 512 x 300 CT cheap.

    ``centroids`` (world LPS mm with VerSe ``label``s): the levels are instead named on the
    target grid itself by :func:`labels_from_centroids`. Why: a working-grid id carried over
    nearest-neighbour puts every boundary between two levels on the working grid's staircase
    (up to half a 3.6 mm voxel off the plane halfway between the centroids); named on the CT
    grid the boundary is that plane at the CT's own resolution.
    """
    out = sitk.Image(target.GetSize(), sitk.sitkUInt8)
    out.CopyInformation(target)
    box = _foreground_box(fg_prob, 0.05)
    if box is None or not ids.any():
        return out
    sub_ids = ids[box]
    if not sub_ids.any():
        return out
    origin_idx = [int(s.start) for s in reversed(box)]  # x, y, z
    sub_origin = working.TransformIndexToPhysicalPoint(origin_idx)

    def sub_image(arr: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(working.GetSpacing())
        img.SetDirection(working.GetDirection())
        img.SetOrigin(sub_origin)
        return img

    # the target-grid box covered by the working box (corners mapped through world space)
    corners = np.array(
        [
            [s.start - 0.5 if k else s.stop - 0.5 for k, s in zip(bits, reversed(box), strict=True)]
            for bits in np.ndindex(2, 2, 2)
        ],
        dtype=float,
    )
    world = [working.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners]
    tidx = np.array([target.TransformPhysicalPointToContinuousIndex(w) for w in world])
    size = np.array(target.GetSize())
    lo = np.clip(np.floor(tidx.min(0)).astype(int), 0, size)
    hi = np.clip(np.ceil(tidx.max(0)).astype(int) + 1, 0, size)
    if np.any(hi <= lo):
        return out
    ref = sitk.Image([int(v) for v in hi - lo], sitk.sitkUInt8)
    ref.SetSpacing(target.GetSpacing())
    ref.SetDirection(target.GetDirection())
    ref.SetOrigin(target.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    prob_t = sitk.GetArrayFromImage(
        resample_onto(sub_image(fg_prob[box].astype(np.float32)), ref, default=0.0)
    )
    if centroids:  # named on this grid: the working grid's ids are not needed
        region = labels_from_centroids(
            prob_t >= threshold,
            _index_points(ref, centroids),
            [int(c["label"]) for c in centroids],
            ref.GetSpacing()[::-1],
        )
    else:
        # the nearest labelled working voxel's id for every voxel of the box
        _, nearest = ndimage.distance_transform_edt(sub_ids == 0, return_indices=True)
        filled = sub_ids[tuple(nearest)].astype(np.uint8)
        id_t = sitk.GetArrayFromImage(
            resample_onto(sub_image(filled), ref, interpolator=sitk.sitkNearestNeighbor, default=0)
        )
        region = np.where(prob_t >= threshold, id_t, 0).astype(np.uint8)
    out = sitk.Paste(
        out, sitk.GetImageFromArray(region), ref.GetSize(), [0, 0, 0], [int(v) for v in lo]
    )
    out.CopyInformation(target)
    return out


@dataclass
class VolumePrediction:
    """A label image on the source grid plus the network's evidence, for quality control."""

    labels: sitk.Image
    #: mean max-probability / normalised entropy over the predicted foreground (working grid)
    confidence: dict = field(default_factory=dict)
    #: share of predicted foreground voxels whose id the along-spine relabelling (or the
    #: centroids' naming) changed; None for a foreground model, whose arg-max names no level
    relabelled_fraction: float | None = None


#: The body sizes a size-adaptive working grid follows (:func:`inference_spacing`): about the
#: population's body_scale range; an estimate beyond it is more likely a misnamed or
#: mis-spaced chain than a body, and is clipped.
SIZE_SCALE_RANGE = (0.75, 1.3)
#: how many cervical levels among a case's centroids make its view a neck view for
#: ``predict_cervical_factor`` (:func:`inference_spacing`)
CERVICAL_MIN_LEVELS = 3


def inference_spacing(meta: dict, centroids: list[dict] | None = None) -> list[float]:
    """The grid a volume model segments on: the plan's ``predict_spacing_mm`` where the
    experiment set one, else its training spacing. Why finer: the probability is interpolated
    onto the CT grid, and a 4 mm map blurs thin bone (laminae, processes); a network trained
    with scale augmentation (+-25 %) reads bone at 3.6 mm as a larger body. Measured on one
    run's six test draws, vert3d / vert2d foreground Dice at 4.0 mm 0.865 / 0.882, at 3.6 mm
    0.880 / 0.903; 3.2 mm (the edge of the augmentation) 0.851 (README).

    With ``predict_size_adaptive`` in the plan and ``centroids`` of the case (world mm, VerSe
    labels: the localiser's), that spacing is for a spine of natural size and is scaled by the
    case's :func:`~ctseg.core.spine_size.size_scale` (within :data:`SIZE_SCALE_RANGE`): a small
    body on a finer grid, a large one on a coarser, so that the network sees vertebrae of the
    size it learnt and a small body's thin bone is not lost in the interpolation back
    (README, *A working grid that follows the body's size*).

    With ``predict_cervical_factor`` in the plan and at least :data:`CERVICAL_MIN_LEVELS`
    cervical levels among the centroids, the grid is further multiplied by that factor. Why:
    cervical vertebrae are about half a lumbar one's size, and on a grid made for the body's
    size their thin arches and processes are lost in the interpolation back; on held-out views
    showing the neck a 0.8x grid gained where it lost on every other view (README, *A finer
    grid where the neck is in view*)."""
    base = [float(s) for s in (meta.get("predict_spacing_mm") or meta["spacing_mm"])]
    if not centroids:
        return base
    scale = 1.0
    if meta.get("predict_size_adaptive"):
        from ctseg.core.spine_size import size_scale

        measured = size_scale(centroids)
        if measured is not None:
            scale = float(np.clip(measured, *SIZE_SCALE_RANGE))
    factor = meta.get("predict_cervical_factor")
    if factor:
        cervical = sum(spinal_region(c["label"]) == "cervical" for c in centroids)
        if cervical >= CERVICAL_MIN_LEVELS:
            scale *= float(factor)
    return [b * scale for b in base]


def predict_volume_with_evidence(
    model: torch.nn.Module,
    meta: dict,
    ct: sitk.Image,
    *,
    device: torch.device | str,
    tta_flip: bool | None = None,
    centroids: list[dict] | None = None,
) -> VolumePrediction:
    """Segment one CT image; the labels lie on exactly the CT grid.

    The CT is permuted to the canonical orientation (:mod:`ctseg.core.orientation`, lossless),
    resampled to the model's working spacing, normalised as in training and segmented; the
    working-grid probabilities are post-processed there and carried back onto the canonical
    CT grid by :func:`labels_onto_grid` (linear interpolation of the foreground probability),
    and the result is permuted back onto the source grid with its exact geometry.

    ``centroids`` (world LPS mm, with VerSe ``label``s, e.g. from the centroid localiser, which
    sees the whole field of view): the levels are then named by them
    (:func:`~ctseg.inference.postprocess.labels_from_centroids`) instead of by the network's
    own per-voxel ids and the along-spine relabelling.
    """
    device = torch.device(device)
    exp = meta["experiment"]
    tta = bool(exp.get("tta_flip", False)) if tta_flip is None else tta_flip
    canon = to_canonical(ct)
    vertebrae = meta["task"] == "vertebrae"
    source = fill_metal(canon, meta.get("predict_metal_fill_hu")) if vertebrae else canon
    # resample_to_spacing (anti-aliased, linear), computed at the working samples only
    ct_r = working_image(
        sitk.Cast(source, sitk.sitkFloat32), inference_spacing(meta, centroids), default=-1000.0
    )
    image = hu_to_float(sitk.GetArrayFromImage(ct_r), meta["hu_window"])
    logits = working_grid_logits(model, meta, image, device=device, tta=tta)
    raw = classes_to_ids(decode_logits(logits), meta["class_ids"])
    ids, relabelled, named_by = raw, None, None
    foreground_model = meta.get("classes") == "foreground"
    if meta["task"] == "vertebrae" and (centroids or foreground_model):
        # a foreground model's levels come only from centroids: none found -> no vertebra
        centroids = named_by = centroids or []
        ids = labels_from_centroids(
            raw > 0,
            _index_points(ct_r, centroids),
            [int(c["label"]) for c in centroids],
            ct_r.GetSpacing()[::-1],
        )
        fg = raw > 0
        if not foreground_model:  # a foreground model's arg-max names no level to compare
            relabelled = float((ids[fg] != raw[fg]).mean()) if fg.any() else 0.0
    elif meta["task"] == "vertebrae" and exp.get("postprocess", True):
        ids = relabel_along_spine(
            raw, ct_r.GetDirection(), ct_r.GetSpacing(), [c for c in meta["class_ids"] if c]
        )
        fg = raw > 0
        relabelled = float((ids[fg] != raw[fg]).mean()) if fg.any() else 0.0
    probs = torch.softmax(torch.from_numpy(np.ascontiguousarray(logits)), dim=0).numpy()
    # what post-processing took away (a rib or the skull the network called bone, a piece far
    # from every centroid) must stay away on the CT grid, where labels_onto_grid re-decides
    # the foreground from the interpolated probability and names it by the nearest kept id
    fg_prob = np.where((raw > 0) & (ids == 0), 0.0, 1.0 - probs[0])
    conf = {}
    if (ids > 0).any():
        p = probs[:, ids > 0]
        p = p / np.clip(p.sum(0, keepdims=True), 1e-12, None)
        ent = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(0) / np.log(p.shape[0])
        conf = {"mean_max_prob": float(p.max(0).mean()), "mean_entropy": float(ent.mean())}
    labels = labels_onto_grid(fg_prob, ids, ct_r, canon, centroids=named_by)
    return VolumePrediction(from_canonical(labels, ct), conf, relabelled)


def predict_volume(
    model: torch.nn.Module,
    meta: dict,
    ct: sitk.Image,
    *,
    device: torch.device | str,
    tta_flip: bool | None = None,
    centroids: list[dict] | None = None,
) -> sitk.Image:
    """The label image of :func:`predict_volume_with_evidence`."""
    return predict_volume_with_evidence(
        model, meta, ct, device=device, tta_flip=tta_flip, centroids=centroids
    ).labels


def predict_case(
    model_pt: Path,
    inputs: dict,
    out_path: Path,
    *,
    device: str = "auto",
    tta_flip: bool | None = None,
    localiser: Path | None = None,
    centroids: Path | None = None,
) -> None:
    """Predict one case and write the label NIfTI atomically.

    ``localiser``: a centroid-localiser package (task ``centroids``) whose identified centroids
    name the vertebra levels (see :func:`predict_volume_with_evidence`); or ``centroids``: a
    centroids JSON that localiser already wrote for this case (the workflow's
    ``predict_centroids`` output, so the levels are named by exactly the scored centroids and
    the localiser runs once per case).

    ``inputs``: ``{"ct": path}`` (vertebrae, metal) or ``{"drr": [paths]}`` (bone_drr);
    optional ``"case"`` for error messages.
    """
    dev = resolve_device(device)
    model, meta = load_package(model_pt, dev)
    case = inputs.get("case")
    if meta["task"] == "bone_drr":
        if not inputs.get("drr"):
            raise InputError("bone_drr prediction needs 'drr' view paths", case=case, path=model_pt)
        out = predict_drr_views(model, meta, list(inputs["drr"]), device=dev, case=case)
    else:
        if not inputs.get("ct"):
            raise InputError("volume prediction needs a 'ct' path", case=case, path=model_pt)
        ct = read_image_file(inputs["ct"], case)
        if ct.GetDimension() != 3:
            raise InputError(
                f"CT must be 3D, got {ct.GetDimension()}D", path=inputs["ct"], case=case
            )
        points = None
        if centroids is not None and meta["task"] == "vertebrae":
            from ctseg.localisation.geometry import read_centroids

            points = [
                {"label": c["label"], **dict(zip("xyz", c["world"], strict=True))}
                for c in read_centroids(Path(centroids), case)
            ]
        elif localiser is not None and meta["task"] == "vertebrae":
            from ctseg.localisation.predict import predict_centroids

            points = predict_centroids(Path(localiser), ct, device=device)
        out = predict_volume(model, meta, ct, device=dev, tta_flip=tta_flip, centroids=points)
    _write(out, Path(out_path))
