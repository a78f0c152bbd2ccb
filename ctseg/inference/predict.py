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

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ctseg.core.atomic import atomic_path
from ctseg.core.errors import InputError
from ctseg.core.imageio import read_image_file
from ctseg.models import build_model
from ctseg.training.augment import hu_to_float
from ctseg.training.cubes import resample_to_spacing


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def gaussian_importance(patch: tuple[int, ...], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Gaussian weight map of ``patch`` shape (sigma = patch / 8), normalised to max 1, no zeros."""
    grids = np.meshgrid(*[np.arange(p) - (p - 1) / 2.0 for p in patch], indexing="ij")
    w = np.ones(patch, dtype=np.float64)
    for g, p in zip(grids, patch, strict=True):
        w *= np.exp(-0.5 * (g / max(p * sigma_scale, 1e-6)) ** 2)
    w /= w.max()
    w[w < 1e-4] = 1e-4
    return w.astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Window start positions covering ``size`` with ``patch``-long windows at ``overlap``."""
    if size <= patch:
        return [0]
    step = max(1, int(round(patch * (1.0 - overlap))))
    n = int(np.ceil((size - patch) / step)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, size - patch, n)})


def _pad_to(image: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    pads = [(0, max(0, s - n)) for n, s in zip(image.shape, shape, strict=True)]
    crop = tuple(slice(0, n) for n in image.shape)
    return np.pad(image, pads, mode="constant", constant_values=0.0), crop


@torch.no_grad()
def sliding_window_logits(
    model: torch.nn.Module,
    image: np.ndarray,
    patch: tuple[int, ...],
    n_classes: int,
    *,
    overlap: float = 0.5,
    device: torch.device | str = "cpu",
    tta_flip: bool = False,
    batch_size: int = 1,
) -> np.ndarray:
    """Gaussian-weighted sliding-window logits [C, *image.shape] for a 2D or 3D ``image``.

    Images smaller than ``patch`` are zero-padded (0 = air after normalisation) and cropped
    back. ``tta_flip`` averages with the prediction of the image flipped along its last (x)
    axis, the flip used in training.
    """
    device = torch.device(device)
    model.eval()
    patch = tuple(int(p) for p in patch)
    padded, crop = _pad_to(
        image.astype(np.float32), tuple(max(n, p) for n, p in zip(image.shape, patch, strict=True))
    )
    weight = torch.from_numpy(gaussian_importance(patch)).to(device)
    acc = torch.zeros((n_classes, *padded.shape), dtype=torch.float32, device=device)
    norm = torch.zeros(padded.shape, dtype=torch.float32, device=device)
    vol = torch.from_numpy(padded).to(device)
    starts = [window_starts(n, p, overlap) for n, p in zip(padded.shape, patch, strict=True)]
    corners = [
        tuple(c) for c in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(patch))
    ]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _nullcontext()
    )
    for i in range(0, len(corners), batch_size):
        group = corners[i : i + batch_size]
        sl = [
            tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True)) for corner in group
        ]
        x = torch.stack([vol[s] for s in sl])[:, None]
        with autocast:
            out = model(x).float()
            if tta_flip:
                out = 0.5 * (out + torch.flip(model(torch.flip(x, dims=[-1])).float(), dims=[-1]))
        for s, o in zip(sl, out, strict=True):
            acc[(slice(None), *s)] += o * weight
            norm[s] += weight
    acc /= norm
    return acc[(slice(None), *crop)].cpu().numpy()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def load_model(
    model_pt: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Load ``model.pt`` (written by :func:`ctseg.training.train.train_experiment`) -> (model, meta).

    Untrusted files are refused with an InputError naming the file, never a traceback: the
    pickle is read with ``weights_only=True`` (a pickle calling e.g. ``posix.system`` is
    rejected; torch's advice to retry with ``weights_only=False`` is deliberately not passed
    on), the required keys are checked, and the architecture the metadata describes is first
    built on the ``meta`` device (no memory) and compared parameter by parameter with the stored
    weights, so a metadata entry asking for a huge network cannot allocate it.
    """
    import pickle

    model_pt = Path(model_pt)
    if model_pt.is_dir():
        raise InputError("is a folder, expected a model.pt file", path=model_pt)
    if not model_pt.is_file():
        raise InputError("model file not found", path=model_pt)

    def bad(why: str, exc: BaseException | None = None) -> InputError:
        err = InputError(f"not a usable ctseg model file: {why}", path=model_pt)
        err.__cause__ = exc
        return err

    try:
        blob = torch.load(model_pt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "global" in ln]
        detail = found[0].split(" was not")[0] if found else "disallowed content"
        detail = detail.replace("WeightsUnpickler error: ", "")
        raise bad(f"unsafe or foreign pickle refused ({detail})", exc) from None
    except Exception as exc:  # torch raises many types for foreign or damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise bad(f"cannot read it as a torch file ({first[:200]})", exc) from None
    required = ("state_dict", "meta_json", "experiment_json")
    if not isinstance(blob, dict) or any(k not in blob for k in required):
        have = sorted(map(str, blob)) if isinstance(blob, dict) else type(blob).__name__
        raise bad(f"expected keys {list(required)}, found {have}")
    try:
        meta = json.loads(blob["meta_json"])
        experiment = json.loads(blob["experiment_json"])
        missing_meta = [
            k for k in ("task", "n_classes", "class_ids", "model_kwargs") if k not in meta
        ]
        if missing_meta:
            raise KeyError(f"meta_json lacks {missing_meta}")
        spec = {**experiment, **meta["model_kwargs"]}
        n_classes = int(meta["n_classes"])
        if not 1 <= n_classes <= 1000:
            raise ValueError(f"n_classes {n_classes} out of range")
        with torch.device("meta"):
            probe = build_model(spec, n_classes)
    except (ValueError, TypeError, KeyError, RuntimeError, AttributeError) as exc:
        raise bad(f"invalid metadata ({type(exc).__name__}: {exc})", exc) from None
    state = blob["state_dict"]
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise bad("state_dict is not a mapping of tensors")
    stored = {k: tuple(v.shape) for k, v in state.items()}
    if stored != expected:
        missing = sorted(set(expected) - set(stored))[:3]
        extra = sorted(set(stored) - set(expected))[:3]
        shape = [k for k in expected if k in stored and stored[k] != expected[k]][:3]
        raise bad(
            "weights do not match the architecture in its metadata "
            f"(missing {missing}, unexpected {extra}, other shape {shape})"
        )
    del probe
    model = build_model(spec, n_classes)
    model.load_state_dict(state)
    model.to(device).eval()
    meta["experiment"] = experiment
    return model, meta


def decode_logits(logits: np.ndarray) -> np.ndarray:
    """Class map from logits [C, ...], foreground first.

    A voxel is foreground when the summed probability of all foreground classes beats the
    background's; it then takes the most probable foreground class. With many similar classes
    (17 vertebrae) a network learns *where* the spine is long before it learns *which*
    vertebra, and a plain arg-max then returns background for voxels whose foreground mass is
    split over neighbouring levels; this decoding keeps those voxels and leaves the identity to
    the per-class arg-max and the spine-order post-processing. For two classes it equals arg-max.
    """
    lg = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    probs = torch.softmax(lg, dim=0)
    if probs.shape[0] <= 2:
        return probs.argmax(0).numpy()
    fg = probs[0] < 0.5
    cls = probs[1:].argmax(0) + 1
    return torch.where(fg, cls, torch.zeros_like(cls)).numpy()


def classes_to_ids(pred: np.ndarray, class_ids: list[int]) -> np.ndarray:
    """Map contiguous class indices back to label ids (VerSe ids or 0/1)."""
    lut = np.asarray(class_ids, dtype=np.uint8)
    return lut[pred]


def spinal_order_keys(
    labels: np.ndarray, ids: list[int], direction: tuple[float, ...], spacing: tuple[float, ...]
) -> dict[int, float]:
    """Position of each label's centroid along the spine, increasing from head to feet.

    World z (LPS) points superior; the head-to-feet coordinate is minus the world z of the
    centroid, computed from the array index via the image direction and spacing (origin cancels).
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    keys = {}
    for lid in ids:
        idx = np.argwhere(labels == lid)
        if len(idx) == 0:
            continue
        zyx = idx.mean(0)
        ijk = zyx[::-1] * np.asarray(spacing, dtype=float)  # x, y, z index * spacing
        world = d @ ijk
        keys[int(lid)] = -float(world[2])
    return keys


def keep_largest_component(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """Keep only the largest 26-connected component of each label id; other fragments -> 0."""
    out = labels.copy()
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for lid in ids:
        mask = labels == lid
        if not mask.any():
            continue
        comp, n = ndimage.label(mask, structure=structure)
        if n > 1:
            sizes = np.bincount(comp.ravel())[1:]
            out[mask & (comp != int(np.argmax(sizes)) + 1)] = 0
    return out


def reassign_fragments(labels: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Give dropped fragments the id of the nearest kept vertebra when they are connected to
    one through foreground (a piece of a vertebra the network called by its neighbour's id);
    fragments in foreground islands without any kept vertebra (stray false positives) -> 0."""
    dropped = (labels > 0) & (kept == 0)
    if not dropped.any() or not kept.any():
        return kept
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    fg_comp, _ = ndimage.label(labels > 0, structure=structure)
    anchored = np.unique(fg_comp[kept > 0])
    _, idx = ndimage.distance_transform_edt(kept == 0, return_indices=True)
    nearest = kept[tuple(idx)]
    out = kept.copy()
    take = dropped & np.isin(fg_comp, anchored)
    out[take] = nearest[take]
    return out


def assign_increasing_ids(
    votes: np.ndarray, sizes: np.ndarray, consecutive_bonus: float = 0.25
) -> list[int]:
    """Strictly increasing id index per instance (head to feet) maximising network votes.

    ``votes[k, v]``: voxels of instance ``k`` the network called id index ``v``. Dynamic
    programming over monotone assignments; a step of exactly one id earns ``consecutive_bonus``
    times the instance's size, so that numbering stays consecutive unless the votes clearly
    say a level is missing (e.g. two vertebrae merged into one instance).
    """
    n, n_ids = votes.shape
    if n > n_ids:
        raise ValueError("more instances than ids")
    neg = -np.inf
    best = np.full((n, n_ids), neg)
    back = np.zeros((n, n_ids), dtype=int)
    best[0] = votes[0]
    for k in range(1, n):
        for v in range(k, n_ids):
            prev = best[k - 1, :v].copy()
            prev[v - 1] += consecutive_bonus * sizes[k]
            u = int(np.argmax(prev))
            best[k, v] = prev[u] + votes[k, v]
            back[k, v] = u
    v = int(np.argmax(best[n - 1]))
    out = [v]
    for k in range(n - 1, 0, -1):
        v = int(back[k, v])
        out.append(v)
    return out[::-1]


def relabel_along_spine(
    labels: np.ndarray,
    direction: tuple[float, ...],
    spacing: tuple[float, ...],
    valid_ids: list[int] | None = None,
) -> np.ndarray:
    """Make vertebra ids consistent along the spine.

    1. Instances: each id keeps its largest connected component; the other fragments of that
       id go to the nearest kept vertebra when connected to it through foreground, else are
       dropped as stray false positives (:func:`reassign_fragments`).
    2. Identification: the instances are ordered by centroid from head to feet and given
       strictly increasing ids (VerSe ids increase caudally) that agree with the network's
       per-voxel ids on the most voxels, preferring consecutive numbering
       (:func:`assign_increasing_ids`). A swapped or mis-identified vertebra is thereby
       corrected by its neighbours, a consistently shifted prediction keeps the network's
       identification, and a merged pair costs one level instead of shifting the rest.

    ``valid_ids`` (e.g. the trained ids) bounds the numbering.
    """
    ids = [int(v) for v in np.unique(labels) if v != 0]
    if not ids:
        return labels.copy()
    kept = keep_largest_component(labels, ids)
    keys = spinal_order_keys(kept, ids, direction, spacing)
    ordered = sorted(keys, key=keys.get)
    instances = reassign_fragments(labels, kept)
    valid = sorted(set(valid_ids) | set(ids)) if valid_ids else list(range(1, 256))
    if len(ordered) > len(valid):  # more instances than ids: keep the network's ids
        return instances
    index = {v: i for i, v in enumerate(valid)}
    votes = np.zeros((len(ordered), len(valid)))
    sizes = np.zeros(len(ordered))
    for k, lid in enumerate(ordered):
        region = instances == lid
        sizes[k] = region.sum()
        vals, counts = np.unique(labels[region], return_counts=True)
        for v, c in zip(vals.tolist(), counts.tolist(), strict=True):
            if v in index:
                votes[k, index[v]] = c
    chosen = assign_increasing_ids(votes, sizes)
    result = np.zeros_like(labels)
    for k, lid in enumerate(ordered):
        result[instances == lid] = valid[chosen[k]]
    return result


def _write(image: sitk.Image, out_path: Path) -> None:
    with atomic_path(out_path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def predict_volume(
    model: torch.nn.Module,
    meta: dict,
    ct: sitk.Image,
    *,
    device: torch.device,
    tta_flip: bool | None = None,
    case: str | None = None,
) -> sitk.Image:
    """Segment one CT image; returns a uint8 label image on exactly the CT grid."""
    exp = meta["experiment"]
    tta = bool(exp.get("tta_flip", False)) if tta_flip is None else tta_flip
    ct_r = resample_to_spacing(
        sitk.Cast(ct, sitk.sitkFloat32), meta["spacing_mm"], is_label=False, default=-1000.0
    )
    image = hu_to_float(sitk.GetArrayFromImage(ct_r), meta["hu_window"])
    patch = tuple(reversed(meta["patch"]))  # [z, y, x]
    if meta["dim"] == 2:
        axis = int(meta.get("slice_axis", 0))  # [z, y, x] axis the model's slices cut along
        stack = np.moveaxis(image, axis, 0)
        patch2d = tuple(p for k, p in enumerate(patch) if k != axis)
        pred = np.zeros(stack.shape, dtype=np.int64)
        for k in range(stack.shape[0]):
            logits = sliding_window_logits(
                model, stack[k], patch2d, meta["n_classes"], device=device, tta_flip=tta
            )
            pred[k] = decode_logits(logits)
        pred = np.moveaxis(pred, 0, axis)
    else:
        logits = sliding_window_logits(
            model, image, patch, meta["n_classes"], device=device, tta_flip=tta
        )
        pred = decode_logits(logits)
    ids = classes_to_ids(pred, meta["class_ids"])
    if meta["task"] == "vertebrae" and exp.get("postprocess", True):
        ids = relabel_along_spine(
            ids, ct_r.GetDirection(), ct_r.GetSpacing(), [c for c in meta["class_ids"] if c]
        )
    lab_r = sitk.GetImageFromArray(ids.astype(np.uint8))
    lab_r.CopyInformation(ct_r)
    out = sitk.Resample(lab_r, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return out


def read_drr(path: str | Path, case: str | None = None) -> tuple[np.ndarray, sitk.Image]:
    """A DRR NIfTI as a float32 2D array [rows, cols] plus its image (2D or 3D with one slice)."""
    img = read_image_file(path, case)
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise InputError(f"DRR must be 2D, got shape {arr.shape}", path=path, case=case)
        arr = arr[0]
    return arr, img


def preprocess_drr(arr: np.ndarray, variant: str) -> np.ndarray:
    """Apply the experiment's DRR pre-processing (``ctseg.drr.preprocess.apply``; imported lazily
    because another module owns it) and return float32."""
    from ctseg.drr import preprocess

    return np.asarray(preprocess.apply(arr, variant), dtype=np.float32)


def pad_to_multiple(arr: np.ndarray, k: int) -> np.ndarray:
    """Zero-pad at the far end of each axis to a multiple of ``k`` (network divisor)."""
    return np.pad(arr, [(0, (-n) % k) for n in arr.shape])


def predict_drr_views(
    model: torch.nn.Module,
    meta: dict,
    drr_paths: list[str | Path],
    *,
    device: torch.device,
    case: str | None = None,
) -> sitk.Image:
    """Segment each DRR view; stack the 0/1 masks along z (z = view order).

    The geometry matches ``ctseg.drr.stack_views`` (the truth stack): spacing
    ``[col, row, 1]`` of the first view, default origin and direction, so that prediction and
    truth lie on the same grid.
    """
    variant = meta["experiment"].get("preprocess", "none")
    masks, spacing = [], None
    for p in drr_paths:
        arr, img = read_drr(p, case)
        if spacing is None:
            spacing = img.GetSpacing()[:2]
        x = pad_to_multiple(preprocess_drr(arr, variant), model.divisor)
        logits = sliding_window_logits(model, x, x.shape, meta["n_classes"], device=device)
        masks.append(logits.argmax(0)[: arr.shape[0], : arr.shape[1]].astype(np.uint8))
    if len({m.shape for m in masks}) != 1:
        raise InputError("DRR views of one case differ in size", case=case, path=drr_paths[0])
    out = sitk.GetImageFromArray(np.stack(masks))
    out.SetSpacing((float(spacing[0]), float(spacing[1]), 1.0))
    return out


def predict_case(
    model_pt: Path,
    inputs: dict,
    out_path: Path,
    *,
    device: str = "auto",
    tta_flip: bool | None = None,
) -> None:
    """Predict one case and write the label NIfTI atomically.

    ``inputs``: ``{"ct": path}`` (vertebrae, metal) or ``{"drr": [paths]}`` (bone_drr);
    optional ``"case"`` for error messages.
    """
    dev = resolve_device(device)
    model, meta = load_model(model_pt, dev)
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
        out = predict_volume(model, meta, ct, device=dev, tta_flip=tta_flip, case=case)
    _write(out, Path(out_path))
