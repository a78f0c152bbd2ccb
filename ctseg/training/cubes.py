"""Augmentation cubes: training samples resampled, cropped, augmented and streamed to HDF5.

A cube (seed 001's "makeCube") holds, for every training case, the un-augmented original plus
``recipe["copies"]`` augmented copies. Each sample is either the whole volume padded/cropped to
``recipe["patch"]`` (``mode: whole``, the default) or a random crop of that size biased towards
foreground (``mode: random``, probability ``fg_prob`` of centring on a labelled voxel).

Intensities: HU clipped to ``recipe["hu_window"]`` (default [-1000, 2000]) and scaled to [0, 1]
(see :func:`ctseg.training.augment.hu_to_float`). Labels: VerSe ids (task ``vertebrae``) or 0/1 (task
``metal``); the mapping to contiguous classes happens at training time.

File layout: ``image`` float32 [N, D, H, W], ``label`` uint8 [N, D, H, W] (chunked per sample,
gzip level 1 with byte shuffle: readable by any HDF5 tool, the same size as level 4 on these
float volumes and 25 % faster to write), ``case_index`` int32 [N], ``copy_index`` int32 [N],
``seed`` int64 [N]; attribute ``provenance`` (JSON: recipe, config hash, cases, seeds, spacing,
patch, hu_window). Samples are written one at a time, so memory holds one case, whatever the
cohort size.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from ctseg.core.atomic import atomic_path
from ctseg.core.config import CubeRecipe
from ctseg.core.errors import InputError
from ctseg.core.imageio import read_image_file
from ctseg.core.normalise import hu_to_float
from ctseg.core.orientation import CANONICAL, to_canonical
from ctseg.core.resample import resample_to_spacing
from ctseg.core.tasks import get_task
from ctseg.report.training import plot_cube_samples
from ctseg.training.augment import augment_pair, build_augmentation


def recipe_hash(recipe: dict) -> str:
    """Stable sha256 of a recipe (sorted-key JSON), recorded in the cube's provenance."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def sample_seed(seed: int, case_index: int, copy_index: int) -> int:
    """Independent, reproducible seed for one sample (numpy SeedSequence mixing)."""
    return int(
        np.random.SeedSequence([int(seed), int(case_index), int(copy_index)]).generate_state(1)[0]
    )


def as_recipe(recipe: dict | CubeRecipe) -> CubeRecipe:
    return recipe if isinstance(recipe, CubeRecipe) else CubeRecipe.from_dict(recipe)


def load_case_arrays(item: dict, recipe: dict | CubeRecipe) -> tuple[np.ndarray, np.ndarray]:
    """Load one case at the recipe spacing: (normalised float32 image, uint8 label) [z, y, x],
    in the canonical orientation that inference uses."""
    recipe = as_recipe(recipe)
    task = recipe.task
    case = item.get("case")
    label_key = get_task(task).truth_key
    if not item.get(label_key):
        raise InputError(
            f"task {task!r} needs a {label_key!r} file", case=case, path=item.get("ct")
        )
    ct = read_image_file(item["ct"], case)
    lab = read_image_file(item[label_key], case)
    if ct.GetSize() != lab.GetSize() or not np.allclose(
        ct.GetSpacing(), lab.GetSpacing(), atol=1e-4
    ):
        raise InputError(
            f"{label_key} grid {lab.GetSize()} / {lab.GetSpacing()} differs from the CT grid "
            f"{ct.GetSize()} / {ct.GetSpacing()}",
            path=item[label_key],
            case=case,
        )
    lab.CopyInformation(ct)
    ct, lab = to_canonical(ct), to_canonical(lab)  # the orientation inference works in
    spacing = recipe.spacing_mm
    ct_r = resample_to_spacing(
        sitk.Cast(ct, sitk.sitkFloat32), spacing, is_label=False, default=-1000.0
    )
    lab_r = resample_to_spacing(sitk.Cast(lab, sitk.sitkUInt8), spacing, is_label=True)
    image = hu_to_float(sitk.GetArrayFromImage(ct_r), recipe.hu_window)
    label = sitk.GetArrayFromImage(lab_r).astype(np.uint8)
    if task == "metal":
        label = (label > 0).astype(np.uint8)
    return image, label


def pad_crop_to(
    array: np.ndarray,
    shape: tuple[int, ...],
    centre: tuple[int, ...] | None = None,
    cval: float = 0,
) -> np.ndarray:
    """Window of ``shape`` around ``centre`` (default: the array centre), zero/``cval`` padded."""
    centre = tuple(s // 2 for s in array.shape) if centre is None else centre
    out = np.full(shape, cval, dtype=array.dtype)
    src, dst = [], []
    for n, size, c in zip(array.shape, shape, centre, strict=True):
        start = int(c) - size // 2
        s0, s1 = max(start, 0), min(start + size, n)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - start, s1 - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


def foreground_centre(label: np.ndarray) -> tuple[int, ...]:
    """Centre of the foreground bounding box (the array centre if there is no foreground)."""
    idx = np.argwhere(label > 0)
    if len(idx) == 0:
        return tuple(s // 2 for s in label.shape)
    return tuple(int(v) for v in (idx.min(0) + idx.max(0)) // 2)


def choose_crop_centre(
    label: np.ndarray,
    shape: tuple[int, ...],
    rng: np.random.Generator,
    fg_prob: float,
    negatives: np.ndarray | None = None,
    neg_prob: float = 0.0,
) -> tuple[int, ...]:
    """Random crop centre: a random foreground voxel with probability ``fg_prob``, a random
    voxel of ``negatives`` (a mask: bone that is not foreground) with probability ``neg_prob``,
    else uniform over centres that keep the crop inside the volume.

    Foreground-biased crops alone never show the ribs' lateral arcs, the iliac wings or the
    skull, and a network trained on them calls all bone "vertebra" there; the hard negatives
    are those regions. Along axes where the crop is at least as large as the volume the crop
    stays centred on the volume, so e.g. a crop spanning the whole spine keeps every vertebra
    (identification needs the whole column) instead of being shifted out of the field of view.
    """
    u = rng.random()
    if u < fg_prob:
        idx = np.flatnonzero(label)
    elif u < fg_prob + neg_prob and negatives is not None:
        idx = np.flatnonzero(negatives)
    else:
        idx = np.array([], dtype=np.int64)
    pick = np.unravel_index(idx[rng.integers(len(idx))], label.shape) if len(idx) else None
    centre = []
    for ax, (n, size) in enumerate(zip(label.shape, shape, strict=True)):
        lo, hi = size // 2, n - (size - size // 2)
        if size >= n:
            centre.append(n // 2)
        elif pick is not None:
            centre.append(int(pick[ax]))
        else:
            centre.append(int(rng.integers(lo, hi + 1)))
    return tuple(centre)


def bone_negatives(image: np.ndarray, label: np.ndarray, recipe: CubeRecipe) -> np.ndarray | None:
    """Voxels of bone (>= ``bone_hu`` on the normalised image) that carry no label, at least
    two voxels away from any labelled one (so a crop centred there is not a vertebra's edge)."""
    if recipe.bone_neg_prob <= 0:
        return None
    level = float(hu_to_float(np.array([recipe.bone_hu]), recipe.hu_window)[0])
    near = ndimage.binary_dilation(label > 0, iterations=2)
    return (image >= level) & ~near


def build_cube(items: list[dict], out_h5: Path, recipe: dict | CubeRecipe, *, seed: int) -> None:
    """Build an augmentation cube HDF5 from training cases (see module docstring).

    ``items``: ``{"case", "ct", "labels", "metal"}`` paths; ``recipe``: ``task``, ``spacing_mm``
    (x, y, z), ``patch`` (x, y, z voxels), ``copies``, optional ``mode`` (whole | random),
    ``fg_prob``, ``hu_window``, ``augment`` (see :data:`ctseg.training.augment.DEFAULT_AUGMENT`).
    """
    if not items:
        raise InputError("no training cases for the cube", path=out_h5)
    given = recipe.to_dict() if isinstance(recipe, CubeRecipe) else dict(recipe)
    recipe = as_recipe(recipe)
    patch_xyz = [int(p) for p in recipe.patch]
    shape = tuple(reversed(patch_xyz))  # [z, y, x]
    copies, mode, fg_prob = recipe.copies, recipe.mode, recipe.fg_prob
    compose = build_augmentation(recipe.augment or None)
    n_total = len(items) * (copies + 1)
    seeds: list[int] = []
    provenance = {
        "recipe": given,
        "config_hash": recipe_hash(given),
        "seed": int(seed),
        "cases": [str(it.get("case")) for it in items],
        "spacing_mm": [float(s) for s in recipe.spacing_mm],
        "patch": patch_xyz,
        "hu_window": list(recipe.hu_window),
        "orientation": CANONICAL,
        "task": recipe.task,
        "mode": mode,
        "normalisation": "clip(HU, hu_window) scaled linearly to [0, 1]",
    }
    out_h5 = Path(out_h5)
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w", track_order=False) as h5:
        chunks = (1, *shape)
        d_img = h5.create_dataset(
            "image",
            (n_total, *shape),
            np.float32,
            chunks=chunks,
            compression="gzip",
            compression_opts=1,
            shuffle=True,
        )
        d_lab = h5.create_dataset(
            "label",
            (n_total, *shape),
            np.uint8,
            chunks=chunks,
            compression="gzip",
            compression_opts=1,
        )
        d_case = h5.create_dataset("case_index", (n_total,), np.int32)
        d_copy = h5.create_dataset("copy_index", (n_total,), np.int32)
        d_seed = h5.create_dataset("seed", (n_total,), np.int64)
        n = 0
        with tqdm(total=n_total, desc=f"cube {out_h5.name}", unit="sample") as bar:
            for ci, item in enumerate(items):
                image, label = load_case_arrays(item, recipe)
                negatives = bone_negatives(image, label, recipe) if mode == "random" else None
                for k in range(copies + 1):
                    s = sample_seed(seed, ci, k)
                    rng = np.random.default_rng(s)
                    if mode == "whole":
                        centre = foreground_centre(label) if recipe.centre_on_foreground else None
                    else:
                        centre = (
                            foreground_centre(label)
                            if k == 0
                            else choose_crop_centre(
                                label, shape, rng, fg_prob, negatives, recipe.bone_neg_prob
                            )
                        )
                    if centre is not None:  # axes the patch spans stay centred (no shift)
                        centre = tuple(
                            n // 2 if size >= n else c
                            for c, n, size in zip(centre, label.shape, shape, strict=True)
                        )
                    img = pad_crop_to(image, shape, centre)
                    lab = pad_crop_to(label, shape, centre)
                    if k > 0:
                        img, lab = augment_pair(img, lab, compose, s)
                    d_img[n], d_lab[n] = img, lab
                    d_case[n], d_copy[n], d_seed[n] = ci, k, s
                    seeds.append(s)
                    n += 1
                    bar.update(1)
        provenance["sample_seeds"] = seeds
        h5.attrs["provenance"] = json.dumps(provenance, sort_keys=True)


def read_provenance(h5_path: Path) -> dict:
    """The provenance JSON of a cube."""
    with h5py.File(h5_path, "r") as h5:
        return json.loads(h5.attrs["provenance"])


def check_cube(h5: Path, out_png: Path, out_tsv: Path, *, n_show: int = 4) -> None:
    """QC of a cube: a montage PNG and a TSV of label voxel frequencies per sample.

    The montage shows, for ``n_show`` samples spread over the cube, the central axial, coronal
    and sagittal slices of the image, each with the label overlaid (so misalignment between
    augmented image and label is visible at a glance; drawn by
    :func:`ctseg.report.training.plot_cube_samples`). The TSV has one row per sample:
    ``index, case, copy, voxels, label, count, fraction`` for every label present.
    """
    h5 = Path(h5)
    if not h5.is_file():
        raise InputError("cube not found", path=h5)
    with h5py.File(h5, "r") as f:
        prov = json.loads(f.attrs["provenance"])
        n = f["image"].shape[0]
        rows = ["index\tcase\tcopy\tvoxels\tlabel\tcount\tfraction"]
        for i in range(n):
            lab = f["label"][i]
            ids, counts = np.unique(lab, return_counts=True)
            case = prov["cases"][int(f["case_index"][i])]
            for lid, cnt in zip(ids, counts, strict=True):
                rows.append(
                    f"{i}\t{case}\t{int(f['copy_index'][i])}\t{lab.size}\t{int(lid)}\t{int(cnt)}\t{cnt / lab.size:.6f}"
                )
        plot_cube_samples(f, prov, out_png, n_show=n_show)
    with atomic_path(out_tsv) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
