"""Centroids of one CT from a trained localiser (``model.pt`` of :func:`train_localiser`).

CT -> LPS + working spacing (:mod:`ctseg.localisation.geometry`) -> HU window -> padded to the
network divisor -> per-level sigmoid heatmaps -> detection + refinement
(:func:`ctseg.localisation.heatmaps.detect_points`) -> levels along the spine
(:func:`ctseg.localisation.decode.assign_levels`) -> world LPS mm of the original scan.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ctseg.core.config import LOCALISER_MEMBER as MEMBER
from ctseg.core.device import resolve_device
from ctseg.core.errors import InputError
from ctseg.inference.package import load_package
from ctseg.localisation.cut_levels import drop_cut_ends
from ctseg.localisation.decode import assign_levels, chain_steps, level_name
from ctseg.localisation.geometry import (
    crop_to_body,
    index_to_world,
    inside,
    on_the_column,
    read_ct,
    to_working,
    working_array,
    world_to_index,
)
from ctseg.localisation.heatmaps import detect_points, sample_max
from ctseg.metal import fill_metal
from ctseg.training.precision import mixed_precision


def pad_zyx(arr: np.ndarray, divisor: int, min_z: int = 0) -> np.ndarray:
    """Pad the last three axes at their end up to multiples of ``divisor`` (0 = air), z to at
    least ``min_z``."""
    shape = arr.shape[-3:]
    pad = [(-s) % divisor for s in shape]
    pad[0] = max(pad[0], min_z - shape[0])
    if not any(pad):
        return arr
    widths = [(0, 0)] * (arr.ndim - 3) + [(0, p) for p in pad]
    return np.pad(arr, widths)


#: Output heads of a localiser. ``per_level``: one sigmoid heatmap per level (Payer et al.).
#: ``detect_identify`` (default): channel 0 is a sigmoid heatmap of *any* vertebra centroid
#: (detection), channels 1.. a softmax over the levels (identification), seed 004's two
#: stages in one network (reasons in :mod:`ctseg.localisation.training`).
HEADS = ("per_level", "detect_identify")


def head_of(meta: dict) -> str:
    """The output head a model's meta declares (packages written before heads: per_level)."""
    head = str(meta.get("head", "per_level"))
    if head not in HEADS:
        raise InputError(f"unknown localiser head {head!r}; known: {', '.join(HEADS)}")
    return head


def forward_precision(meta: dict, device: torch.device):
    """Autocast context factory for a localiser package's forward passes at prediction: the
    precision its networks trained in (``cpu_bf16`` in the package; bf16 on CUDA), as the
    segmentation path runs its windows (:func:`ctseg.training.precision.mixed_precision`).

    Why: on a bf16 CPU the three stages' forward passes are 0.6x the float32 time, and on the
    five held-out seed sets (2,110 levels) the bf16 networks identified 1,983 levels against
    float32's 1,982 (README, *Centroid-only training*)."""
    return mixed_precision(device, bool(meta.get("cpu_bf16", False)))


@torch.no_grad()
def forward_logits(
    model: torch.nn.Module, arr: np.ndarray, device: torch.device, autocast=nullcontext
) -> torch.Tensor:
    """Raw network output ``[C, z, y, x]`` (CPU float32) of a whole working array: one forward
    pass, since the localiser needs the whole field of view to tell levels apart; under
    ``autocast`` (a context factory, :func:`forward_precision`)."""
    divisor = int(getattr(model, "divisor", 1))
    x = torch.from_numpy(pad_zyx(arr, divisor)[None, None].copy()).to(device)
    was_training = model.training
    model.eval()
    with autocast():
        out = model(x)
    out = out.float()[0].cpu()
    model.train(was_training)
    z, y, w = arr.shape
    return out[:, :z, :y, :w]


def activate(logits: torch.Tensor, head: str) -> np.ndarray:
    """Logits -> maps in [0, 1]: sigmoid heatmaps, or for ``detect_identify`` the detection
    sigmoid stacked on the identification softmax."""
    if head == "detect_identify":
        return torch.cat([torch.sigmoid(logits[:1]), torch.softmax(logits[1:], dim=0)]).numpy()
    return torch.sigmoid(logits).numpy()


def infer_heatmaps(
    model: torch.nn.Module,
    arr: np.ndarray,
    device: torch.device,
    head: str = "per_level",
    autocast=nullcontext,
) -> np.ndarray:
    """Activated maps ``[C, z, y, x]`` of a whole working array (:func:`activate`)."""
    return activate(forward_logits(model, arr, device, autocast), head)


def ensemble_heatmaps(
    model: torch.nn.Module, meta: dict, arr: np.ndarray, device: torch.device
) -> np.ndarray:
    """The first stage's activated maps, averaged over the package's ensemble members (the
    main network and every ``first_stage_<k>`` sub-network; just the main one's without)."""
    head = head_of(meta)
    nets = [model] + [
        net for name, net in sorted((meta.get("subnet_modules") or {}).items())
        if name.startswith(MEMBER)
    ]  # fmt: skip
    autocast = forward_precision(meta, device)
    heat = infer_heatmaps(nets[0], arr, device, head, autocast)
    for net in nets[1:]:
        heat += infer_heatmaps(net, arr, device, head, autocast)
    return heat / len(nets)


def labelled_points(worlds: list, votes: np.ndarray, labels: list, levels: list) -> list[dict]:
    """The decoded output: one dict per point that got a level (head to feet)."""
    out = []
    for w, v, lab in zip(worlds, votes, labels, strict=True):
        if lab is None:
            continue
        x, y, z = (float(c) for c in w)
        out.append(
            {
                "label": int(lab),
                "name": level_name(lab),
                "world": [x, y, z],
                "x": x,
                "y": y,
                "z": z,
                "score": float(v[levels.index(lab)]),
            }
        )
    return out


def decode_centroids(heatmaps: np.ndarray, work: sitk.Image, meta: dict) -> list[dict]:
    """Heatmaps on the working grid ``work`` -> ``[{"label", "name", "world", "x", "y", "z",
    "score"}]`` sorted head to feet, at most one per level."""
    levels = [int(v) for v in meta["levels"]]
    sp_zyx = list(reversed(work.GetSpacing()))
    if head_of(meta) == "detect_identify":
        # per-level evidence = "a centroid is here" x "it is level k": the identification
        # softmax splits the detection ridge into one bump per level (neighbouring vertebrae,
        # whose detection bumps merge at 8 mm, fall into different channels)
        heatmaps = heatmaps[:1] * heatmaps[1:]
    pts = detect_points(
        heatmaps,
        sp_zyx,
        float(meta.get("threshold", 0.3)),
        float(meta.get("min_distance_mm", 12.0)),
        meta.get("refine", "gaussian"),
    )
    for p in pts:
        p["world"] = index_to_world(work, p["zyx"])
    pts.sort(key=lambda p: -p["world"][2])  # head (superior, +z in LPS) to feet
    votes = np.array([sample_max(heatmaps, p["zyx"]) for p in pts])
    votes = votes.reshape(-1, len(levels))
    labels = assign_levels(
        votes,
        levels,
        float(meta.get("consecutive_bonus", 0.25)),
        bool(meta.get("allow_skips", True)),
        float(meta.get("skip_weight", 1.0)),
        float(meta.get("optional_cost", 0.0)),
    )
    return labelled_points([p["world"] for p in pts], votes, labels, levels)


def candidate_points(heatmaps: np.ndarray, work: sitk.Image, meta: dict) -> list[list[float]]:
    """World points where the first stage sees a vertebra (unlabelled): local maxima of the
    per-level evidence and, for ``detect_identify``, of the detection map itself, at a lower
    threshold than labelled decoding (the refiner drops what is not a vertebra)."""
    sp_zyx = list(reversed(work.GetSpacing()))
    maps = heatmaps[:1] * heatmaps[1:] if head_of(meta) == "detect_identify" else heatmaps
    if head_of(meta) == "detect_identify":
        maps = np.concatenate([heatmaps[:1], maps])
    thr = 0.5 * float(meta.get("threshold", 0.3))
    pts = detect_points(maps, sp_zyx, thr, float(meta.get("min_distance_mm", 12.0)) * 0.75)
    return [index_to_world(work, p["zyx"]) for p in pts]


def level_votes(heatmaps: np.ndarray, work: sitk.Image, worlds: list, meta: dict) -> np.ndarray:
    """``[n, levels]``: the first stage's identification maps (softmax for
    ``detect_identify``, per-level heatmaps otherwise) read trilinearly at each point."""
    maps = heatmaps[1:] if head_of(meta) == "detect_identify" else heatmaps
    if not worlds:
        return np.zeros((0, len(maps)))
    idx = np.array([world_to_index(work, w) for w in worlds]).T  # [3, n]
    return np.stack(
        [ndimage.map_coordinates(m, idx, order=1, mode="nearest") for m in maps], axis=1
    )


def drop_duplicates(worlds: list, votes: np.ndarray) -> tuple[list, np.ndarray]:
    """Of two neighbours in the chain closer than half its local spacing (:func:`chain_steps`
    gives 0: two peaks on one vertebra, e.g. on the 100 mm sacrum), keep the one with the
    stronger evidence. Why: a skipped point costs the DP its best evidence, so the second
    detection was kept under a transitional name (the sacrum's twin as "L6")."""
    worlds, votes = list(worlds), np.asarray(votes)
    while len(worlds) >= 3:
        steps = chain_steps(worlds)
        pairs = [i for i in range(len(worlds) - 1) if steps[i, i + 1] == 0]
        if not pairs:
            break
        i = pairs[0]
        weak = i if votes[i].max() < votes[i + 1].max() else i + 1
        del worlds[weak]
        votes = np.delete(votes, weak, axis=0)
    return worlds, votes


def refined_evidence(
    heatmaps: np.ndarray,
    work: sitk.Image,
    meta: dict,
    fine: tuple,
    refiner,
    device,
    regions: tuple | None = None,
) -> tuple[list, np.ndarray, np.ndarray | None]:
    """What the networks say about each refined point, before any naming: ``(worlds, votes,
    region_p)`` -- the first-stage candidates refined on the fine grid
    (:func:`ctseg.localisation.refine.refine_candidates`) and kept on the column
    (:func:`on_the_column`), head to feet; their first stage identification ``[n, levels]``
    (times the refiner's own level head where it has one); and, when the package has a region
    network (``regions``: (network, its grid, its array)), its class probabilities
    ``[n, len(classes)]`` (else None)."""
    from ctseg.localisation.refine import refine_candidates

    spec = meta["refiner"]
    autocast = forward_precision(meta, device)
    cands = candidate_points(heatmaps, work, meta)
    pts = refine_candidates(refiner, spec, fine[0], fine[1], cands, device, autocast)
    keep = on_the_column([p["world"] for p in pts])
    pts = [p for p, k in zip(pts, keep, strict=True) if k]
    worlds = [p["world"] for p in pts]
    votes = level_votes(heatmaps, work, worlds, meta)
    if pts and "levels" in pts[0]:
        # product of experts: the whole-view first stage and the refiner's local view
        # (ribs, C1/C2 shape, the sacrum) must agree; renormalised per point
        w = float(spec.get("local_weight", 1.0))
        local = np.stack([p["levels"] for p in pts])
        votes = votes * np.power(np.clip(local, 1e-6, None), w)
        votes = votes / np.clip(votes.sum(axis=1, keepdims=True), 1e-12, None)
    probs = None
    if regions is not None and pts:
        from ctseg.localisation.regions import region_probs

        net, rwork, rarr = regions
        probs = region_probs(net, meta["regions"], rwork, rarr, worlds, device, autocast)
    return worlds, votes, probs


def name_chain(
    worlds: list, votes: np.ndarray, region_p: np.ndarray | None, meta: dict
) -> list[dict]:
    """Levels for refined points (head to feet) from the first stage's votes ``[n, levels]``
    and, when the package has a region network, its class probabilities ``region_p``
    ``[n, len(classes)]``: drops what is not a vertebra, weighs the two experts
    (:func:`ctseg.localisation.regions.combine`), and chooses the levels along the chain
    (:func:`assign_levels`). Apart from :func:`refined_evidence` (whose output it takes) so
    that decoding settings can be measured on stored network outputs
    (``benchmarks/bench_localiser_decoding.py``)."""
    levels = [int(v) for v in meta["levels"]]
    spec = meta["refiner"]
    if region_p is not None and len(worlds):
        from ctseg.localisation.regions import (
            REGIONS_DEFAULTS,
            below_sacrum,
            classes_of,
            combine,
            none_prob,
            one_sacrum,
        )

        spec_r = meta["regions"]
        classes = classes_of(spec_r)
        probs = np.asarray(region_p)
        # not a vertebra (a ghost between two, the pelvis below the sacrum): out of the chain
        # before its spacing is read
        keep = none_prob(probs, classes) <= float(spec_r.get("none_drop", 0.5))
        below = spec_r.get("below_sacrum_mm", 30.0)
        if below is not None:
            keep &= ~below_sacrum(worlds, probs, 0.5, float(below), classes)
        worlds = [w for w, k in zip(worlds, keep, strict=True) if k]
        votes, probs = votes[keep], probs[keep]
        # the sacrum is one bone: its S1-S3 bodies found as points leave one of them
        keep = one_sacrum(worlds, probs, classes=classes)
        worlds = [w for w, k in zip(worlds, keep, strict=True) if k]
        votes = combine(
            votes[keep],
            probs[keep],
            levels,
            float(spec_r.get("weight", 1.0)),
            # a package from before the floor decodes with today's default
            float(spec_r.get("first_stage_floor", REGIONS_DEFAULTS["first_stage_floor"])),
            classes,
        )
        worlds, votes = drop_duplicates(worlds, votes)
        spec = {**spec, "chain_bonus": spec_r.get("chain_bonus", 1.0)}
        spec["chain_steps"] = spec_r.get("chain_steps", True)
    labels = assign_levels(
        votes,
        levels,
        float(spec.get("chain_bonus", meta.get("consecutive_bonus", 0.25))),
        bool(meta.get("allow_skips", True)),
        float(meta.get("skip_weight", 1.0)),
        float(meta.get("optional_cost", 0.0)),
        chain_steps(worlds) if spec.get("chain_steps", False) else None,
    )
    return labelled_points(worlds, votes, labels, levels)


def load_localiser(model_path: str | Path, device: str = "auto") -> tuple[torch.nn.Module, dict]:
    """(model, meta) of a localiser ``model.pt``; InputError when it is another task's model."""
    dev = resolve_device(device)
    model, meta = load_package(model_path, dev)
    if meta.get("task") != "centroids":
        raise InputError(f"not a centroid localiser (task {meta.get('task')!r})", path=model_path)
    meta["device"] = str(dev)
    return model, meta


def predict_centroids(
    model_path: str | Path | tuple, ct: sitk.Image | str | Path, device: str = "auto"
) -> list[dict]:
    """Predicted centroids of ``ct``: ``[{"label", "name", "world": [x, y, z], "x", "y", "z",
    "score"}]`` in world LPS mm, head to feet, at most one per level, inside the field of view;
    a chain end too near the scan's edge to be more than half in view is not a level of the
    scan's label map and is not output (:func:`~ctseg.localisation.cut_levels.drop_cut_ends`).

    ``model_path``: a localiser ``model.pt`` or an already loaded ``(model, meta)`` pair (to
    predict many cases without reloading); ``ct``: a SimpleITK image or an image file."""
    model, meta = (
        model_path if isinstance(model_path, tuple) else load_localiser(model_path, device)
    )
    ct = read_ct(ct)
    seen = network_input(ct, meta)
    if (meta.get("subnet_modules") or {}).get("refiner") is not None:
        pts = name_chain(*case_evidence((model, meta), seen), meta)
    else:
        work, heat = first_stage(model, meta, seen)
        pts = decode_centroids(heat, work, meta)
    # a centroid is a point of the scan: a vertebra cut by the field of view whose centre lies
    # outside it is not output (the scan's truth cannot hold it either), nor a chain end whose
    # centre lies so near the edge that less than half of it is in view (cut_levels)
    return drop_cut_ends([c for c in pts if inside(ct, c["world"])], ct)


def network_input(ct: sitk.Image, meta: dict) -> sitk.Image:
    """The CT the localiser's networks see: its metal filled where the package says so
    (``metal_fill_hu``, :func:`ctseg.metal.fill_metal`), else the CT itself.

    Why: screws at thousands of HU, which few training cases showed, threw whole chains off
    (held-out draws with screws in L3-L5, L4-L5 or T3: none or one level of six identified, all
    named right with the metal filled; README, *Metal filled before segmentation*)."""
    return fill_metal(ct, meta.get("metal_fill_hu"))


def first_stage(
    model: torch.nn.Module, meta: dict, ct: sitk.Image
) -> tuple[sitk.Image, np.ndarray]:
    """(working grid, the first stage's ensemble maps on it) of a CT."""
    work = crop_to_body(to_working(ct, meta["spacing_mm"]))
    arr = working_array(work, meta["hu_window"])
    return work, ensemble_heatmaps(model, meta, arr, next(model.parameters()).device)


def case_evidence(localiser: tuple, ct: sitk.Image) -> tuple[list, np.ndarray, np.ndarray | None]:
    """:func:`refined_evidence` of a CT for a loaded ``(model, meta)`` localiser with a
    refiner: every network run, nothing named yet."""
    from ctseg.localisation.refine import fine_image

    model, meta = localiser
    subnets = meta.get("subnet_modules") or {}
    work, heat = first_stage(model, meta, ct)
    fine = fine_image(ct, meta["refiner"])
    net = subnets.get("regions")
    regions = None if net is None else (net, *fine_image(ct, meta["regions"]))
    dev = next(model.parameters()).device
    return refined_evidence(heat, work, meta, fine, subnets["refiner"], dev, regions)


def predict_centroids_case(
    model_path: Path,
    ct_path: Path,
    out_json: Path,
    *,
    case: str | None = None,
    device: str = "auto",
) -> None:
    """The workflow's form: a CT file -> its predicted centroids.json (our format, world LPS
    mm), written atomically."""
    from ctseg.core.imageio import read_image_file
    from ctseg.core.jsonio import write_json

    pts = predict_centroids(model_path, read_image_file(ct_path, case), device=device)
    rows = [{k: p[k] for k in ("label", "name", "x", "y", "z")} for p in pts]
    write_json(Path(out_json), rows)
