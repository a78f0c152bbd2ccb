"""Quality flags for a predicted vertebra labelling, from the prediction's own evidence.

No ground truth exists for a new scan, so the checks ask whether the result is anatomically
and statistically plausible, and whether the network itself was sure:

- ``unknown_levels``: ids outside VerSe, or outside the ids the model was trained on;
- ``few_levels``: fewer levels than the field of view holds: at least 3, or as many as fit
  in the image's superior-inferior extent at 35 mm per level when that is fewer;
- ``non_consecutive``: a level missing between two found ones (T13 and L6 are optional);
- ``transitional``: the naming uses a transitional level (T13 or L6). Real as they are (about
  one spine in ten), they are where level counting goes wrong -- in radiology, wrong-level
  reports and surgery cluster at lumbosacral transitional vertebrae -- and a model that has
  seen few of them names them mostly where there are none: on the robustness suite and
  held-out draws, every prediction with an L6 in it (4 of 66, before the localiser's lateral
  bound; none since) was a bad one (level Dice 0.00-0.77), one of them with no other flag. Such a naming is to be checked against the
  ribs and the sacrum before it is trusted (``QCThresholds.flag_transitional``);
- ``unlabelled_end``: the column goes on past the first or last labelled level inside the
  field of view: where the next vertebra would be (0.5-1.2 centroid steps along the line
  through the last two centroids, 0.4 steps around it, all of it inside the image) at least
  5 % of the CT is bone (>= 200 HU), yet nothing is labelled there -- a level the network did
  not segment or the naming dropped. Not asked above C1 or below the sacrum (the skull, the
  coccyx and pelvis are bone). Measured on the true centroids of 157 population draws: never
  raised (the level past a true end is out of view); with one end level removed from the
  truth, raised in 278 of 283. Why: two bad predictions the other checks passed (level Dice
  0.54, 0.59) had every level they labelled right and three or four at an end left out
  (needs the CT);
- ``order``: levels out of cranio-caudal order (a swapped pair: T12 found above T11), from
  the centroids' superior (LPS z) coordinates;
- ``volume``: a level whose volume is implausible next to its neighbours (ratio to the median
  of the two nearest found levels on each side outside [0.6, 1.7]) or for its region
  (absolute ml ranges per cervical / thoracic / lumbar level); levels the field of view cuts
  are exempt, their volume being a lower bound;
- ``fragmented``: a level whose voxels in pieces farther than 2.5 voxels from its largest
  26-connected component exceed 5 % (levels the field of view cuts are exempt: the cut may
  separate arch and body; nearer pieces are one bone whose thin pedicle the grid lost; C1 is
  exempt: a ring whose thin arches a coarse grid loses leaves two lateral masses ~25 mm apart);
- ``centroid_spacing``: a gap between consecutive centroids, divided by the natural step
  between those two levels (:func:`ctseg.core.anatomy.natural_step_mm`: a cervical step is
  about 17 mm, a lumbar one 36 mm), below 0.5 or above 1.6 times the case's median of that
  ratio (its size), or below 8 mm; on 120 population draws' truth the ratio lies in
  0.69-1.25 (0.59-1.45 against the plain median step);
- ``centroid_offset``: a level's centroid off the line through its two neighbours' by more
  than 0.30 natural steps at the case's size (a spine bends smoothly: on 120 population
  draws' truth at most 0.25, in lumbar lordosis; an arch given to the next level shifts both
  centroids off it); not through C1, whose centroid lies in its ring around the dens;
- ``low_confidence``: mean max-probability inside the prediction below 0.75, or mean
  normalised entropy above 0.35 (needs the class probabilities);
- ``relabelled``: the fraction of foreground voxels whose arg-max label the along-spine
  relabelling changed is above 15 % (needs the raw arg-max);
- ``anatomy``: a level that the localiser's region network
  (:func:`ctseg.localisation.regions.anatomy_rows`) sees as another part of the spine with
  probability >= 0.8 while giving its label's part <= 0.1: the vertebra called L1 carries the
  last ribs, the one called L4 sits on the sacrum -- the off-by-N naming that the checks above
  cannot see (needs a localiser with a region network);
- ``unanchored``: no labelled level that an anchor class names alone (C1, C2, C7, T1, T11,
  T12, L5, the sacrum: :data:`ANCHOR_CLASSES`) looks like that class with probability >= 0.5
  to the same network. A run of thoracic levels with no first or last rib pair in view
  (T3-T8) is counted from the field of view's edge alone, and named one level off it is as
  consecutive, evenly spaced and plausibly sized as named right: nothing above can tell, so
  a naming no anatomy confirms is not trusted (needs a localiser with a region network).

The sacrum is another bone: its volume (about twice an L5's) and its centroid's distance below
L5 (1.6-1.9 lumbar steps) are not held against the lumbar levels' (the population's own truth
was flagged in 13 of 30 draws for them and for the two rules above; with these rules, 0 of 30).

Each flag names the levels concerned and the measured value; ``trusted`` is true when no flag
is raised. Thresholds live in :class:`QCThresholds` and can be overridden.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ctseg.core.anatomy import natural_body_size, natural_step_mm
from ctseg.core.labels import SACRUM, VERSE_NAMES, spinal_region, spine_rank
from ctseg.formats.grid import index_to_world, inside, label_array, world_to_index
from ctseg.formats.vertebra_stats import vertebra_statistics

#: Levels that a normal spine may lack without a gap: T13 (28) and L6 (25).
OPTIONAL_LEVELS = frozenset({25, 28})
#: C1, the atlas: a ring with no body (no fragmentation or centroid-path check of its own).
ATLAS = 1
#: Standard sequence C1..L5, sacrum (optional levels excluded).
STANDARD_SEQUENCE: list[int] = [*range(1, 25), 26]

#: Region-network classes that hold one level each (or the sacrum): seen at its labelled
#: level, one of them fixes the count of the whole chain. C3-C6, T2-T10 and L1-L4 do not.
ANCHOR_CLASSES = ("C1", "C2", "C7", "T1", "T11", "T12", "L5", "sacrum")

#: Plausible volume range in ml per region (adult vertebrae, including posterior elements,
#: with wide margins for children, elderly and partial segmentations of the arch).
REGION_ML: dict[str, tuple[float, float]] = {
    "cervical": (1.0, 45.0),
    "thoracic": (3.0, 130.0),
    "lumbar": (10.0, 220.0),
}


@dataclass(frozen=True)
class QCThresholds:
    min_levels: int = 3
    max_level_step_mm: float = 35.0
    volume_ratio_low: float = 0.6
    volume_ratio_high: float = 1.7
    fragment_fraction: float = 0.05
    fragment_join_voxels: float = 2.5
    spacing_ratio_low: float = 0.5
    spacing_ratio_high: float = 1.6
    spacing_min_mm: float = 8.0
    max_centroid_offset: float = 0.30
    min_mean_max_prob: float = 0.75
    max_mean_entropy: float = 0.35
    max_relabelled_fraction: float = 0.15
    anatomy_min_seen: float = 0.8
    anatomy_max_expected: float = 0.1
    anchor_min_p: float = 0.5
    flag_transitional: bool = True
    end_bone_fraction: float = 0.05

    @classmethod
    def from_dict(cls, d: dict | None) -> QCThresholds:
        known = {f.name for f in fields(cls)}
        unknown = set(d or {}) - known
        if unknown:
            raise ValueError(f"unknown QC thresholds {sorted(unknown)}; known: {sorted(known)}")
        return cls(**(d or {}))


def _flag(name: str, reason: str, levels: Iterable[int] = (), value: float | None = None) -> dict:
    return {
        "name": name,
        "reason": reason,
        "levels": [VERSE_NAMES.get(int(x), str(int(x))) for x in levels],
        "value": None if value is None else float(value),
    }


def _names(ids: Iterable[int]) -> str:
    return ", ".join(VERSE_NAMES.get(int(i), str(int(i))) for i in ids)


def _gaps(present: list[int]) -> list[tuple[int, int, list[int]]]:
    """(upper, lower, missing standard levels between them) for consecutive found levels."""
    std = [x for x in present if x in STANDARD_SEQUENCE]
    out = []
    for a, b in zip(std, std[1:], strict=False):
        ia, ib = STANDARD_SEQUENCE.index(a), STANDARD_SEQUENCE.index(b)
        missing = STANDARD_SEQUENCE[ia + 1 : ib]
        if missing:
            out.append((a, b, missing))
    return out


def _fragment_fraction(
    arr: np.ndarray,
    label: int,
    box: tuple[slice, ...],
    spacing_zyx: tuple[float, ...] = (1.0, 1.0, 1.0),
    join_voxels: float = 0.0,
) -> float:
    """Share of a level's voxels in pieces farther than ``join_voxels`` times the coarsest
    voxel side from its largest 26-connected piece. Why the join: on a coarse grid a thin
    pedicle vanishes and a cervical vertebra's body and arch lie two voxels apart (the
    phantoms' own truth: C2 / C3 split 55 / 45 % at 3 x 3 x 5 mm, 6-7 mm apart), one bone."""
    sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    mask = arr[sl] == label
    comp, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return 0.0
    sizes = np.bincount(comp.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    if join_voxels <= 0:
        return float(1.0 - sizes.max() / sizes.sum())
    dist = ndimage.distance_transform_edt(comp != largest, sampling=spacing_zyx)
    reach = join_voxels * max(spacing_zyx)
    near = np.full(n + 1, np.inf)
    np.minimum.at(near, comp[mask], dist[mask])
    return float(sizes[near[1:] > reach].sum() / sizes.sum())


def superior_extent_mm(img: sitk.Image) -> float:
    """Extent of the image's voxel boxes along the patient's superior (LPS z) axis."""
    size = np.asarray(img.GetSize(), dtype=np.float64)
    corners = np.array(
        [
            [x, y, z]
            for x in (-0.5, size[0] - 0.5)
            for y in (-0.5, size[1] - 0.5)
            for z in (-0.5, size[2] - 0.5)
        ]
    )
    sup = index_to_world(img, corners)[:, 2]
    return float(sup.max() - sup.min())


def confidence(probabilities: np.ndarray, foreground: np.ndarray) -> dict[str, float]:
    """Mean max-probability and mean normalised entropy over ``foreground`` voxels.

    ``probabilities`` is ``[C, z, y, x]`` (softmax output on the label grid, background
    included); entropy is divided by log C so that 1 means uniform.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 4 or p.shape[1:] != foreground.shape:
        raise ValueError(
            f"probabilities must be [C, z, y, x] = [C, {foreground.shape}], got {p.shape}"
        )
    fg = p[:, foreground]  # [C, n]
    if fg.shape[1] == 0:
        return {"mean_max_prob": float("nan"), "mean_entropy": float("nan")}
    s = fg.sum(axis=0, keepdims=True)
    fg = fg / np.where(s > 0, s, 1.0)
    ent = -(fg * np.log(np.clip(fg, 1e-12, 1.0))).sum(axis=0) / np.log(p.shape[0])
    return {"mean_max_prob": float(fg.max(axis=0).mean()), "mean_entropy": float(ent.mean())}


def quality_flags(
    labels: sitk.Image,
    ct: sitk.Image | None = None,
    probabilities: np.ndarray | None = None,
    *,
    raw_argmax: np.ndarray | sitk.Image | None = None,
    trained_ids: Iterable[int] | None = None,
    thresholds: QCThresholds | dict | None = None,
    stats: dict | None = None,
    confidence_measures: dict | None = None,
    relabelled_fraction: float | None = None,
    anatomy: list[dict] | None = None,
) -> dict:
    """Flags for one predicted label image (VerSe ids); see the module docstring.

    Returns ``{"trusted": bool, "flags": [{"name", "reason", "levels", "value"}], "notes":
    [...], "measures": {...}, "thresholds": {...}}``. ``stats`` may pass a precomputed
    :func:`vertebra_statistics` result of the same labels.

    Class probabilities on the source grid can be large (C x the CT), so the network's
    evidence may come as figures computed on the working grid instead:
    ``confidence_measures`` = :func:`confidence`'s ``{"mean_max_prob", "mean_entropy"}`` and
    ``relabelled_fraction`` = the share of foreground voxels the relabelling changed.
    ``anatomy``: :func:`ctseg.localisation.regions.anatomy_rows` of the labels' centroids.
    """
    th = thresholds if isinstance(thresholds, QCThresholds) else QCThresholds.from_dict(thresholds)
    arr = label_array(labels)
    st = stats if stats is not None else vertebra_statistics(labels, ct)
    rows = st["levels"]
    present = [r["label"] for r in rows]  # spine order
    by = {r["label"]: r for r in rows}
    flags: list[dict] = []
    notes: list[str] = []
    measures: dict = {"n_levels": len(present), "levels": [r["name"] for r in rows]}

    unknown = [x for x in present if x not in VERSE_NAMES]
    trained = None if trained_ids is None else {int(x) for x in trained_ids}
    untrained = [
        x for x in present if trained is not None and x in VERSE_NAMES and x not in trained
    ]
    if unknown or untrained:
        what = []
        if unknown:
            what.append(f"ids {', '.join(map(str, unknown))} are not VerSe vertebrae")
        if untrained:
            what.append(f"{_names(untrained)} not among the model's trained levels")
        flags.append(_flag("unknown_levels", "; ".join(what), unknown + untrained))

    fov = superior_extent_mm(labels)
    measures["fov_superior_mm"] = round(fov, 2)
    expected = min(th.min_levels, int(fov // th.max_level_step_mm))
    if len(present) < max(expected, 1):
        flags.append(
            _flag(
                "few_levels",
                f"only {len(present)} level(s) found ({_names(present) or 'none'}) in a "
                f"{fov:.0f} mm field of view; at least {max(expected, 1)} expected",
                present,
                len(present),
            )
        )

    for a, b, missing in _gaps(present):
        flags.append(
            _flag(
                "non_consecutive",
                f"{_names(missing)} missing between {_names([a])} and {_names([b])}",
                missing,
                len(missing),
            )
        )

    transitional = [x for x in present if x in OPTIONAL_LEVELS]
    if transitional and th.flag_transitional:
        flags.append(
            _flag(
                "transitional",
                f"the naming uses transitional level(s) {_names(transitional)}: the count "
                "of the levels is the uncertain part; check it against the last ribs and "
                "the sacrum",
                transitional,
                len(transitional),
            )
        )

    cut = [r["label"] for r in rows if r["touches_fov_edge"]]
    if cut:
        notes.append(
            f"cut by the field of view (volume and height are lower bounds): {_names(cut)}"
        )

    if ct is not None:
        flags.extend(unlabelled_ends(rows, ct, th))

    # Cranio-caudal order: superior coordinate must fall along the spine order.
    sup = [by[x]["centroid"][2] for x in present]
    inverted = [
        (present[n], present[n + 1]) for n in range(len(present) - 1) if sup[n + 1] >= sup[n]
    ]
    if inverted:
        pairs = "; ".join(f"{_names([b])} lies above {_names([a])}" for a, b in inverted)
        flags.append(
            _flag(
                "order",
                f"levels out of cranio-caudal order: {pairs}",
                sorted({x for p in inverted for x in p}, key=spine_rank),
            )
        )

    # Volumes: against neighbours, and against the region's plausible range.
    vols = {x: by[x]["volume_ml"] for x in present}
    measures["volume_ml"] = {by[x]["name"]: round(vols[x], 3) for x in present}
    # the sacrum is another bone (2x an L5 is normal): no ratio for it, nor against it
    full = [x for x in present if x not in cut and x != SACRUM]
    for n, x in enumerate(present):
        if x in cut or x == SACRUM:
            continue
        neigh = [y for y in present[max(n - 2, 0) : n] + present[n + 1 : n + 3] if y in full]
        if len(neigh) >= 2:
            # each volume over its level's natural body size: an L5 is naturally 1.14 x the
            # median of L3 and L4, a T12 0.78 x L1 and L2's; not with C1, which has no body
            near = [x, *neigh]
            rel = {y: vols[y] / (1.0 if ATLAS in near else natural_body_size(y)) for y in near}
            ratio = rel[x] / float(np.median([rel[y] for y in neigh]))
            if not th.volume_ratio_low <= ratio <= th.volume_ratio_high:
                flags.append(
                    _flag(
                        "volume",
                        f"{_names([x])} volume {vols[x]:.1f} ml is {ratio:.2f} x what its "
                        f"neighbours' ({_names(neigh)}) imply for its size",
                        [x],
                        ratio,
                    )
                )
                continue
        region = spinal_region(x)
        if region:
            lo, hi = REGION_ML[region]
            if not lo <= vols[x] <= hi:
                flags.append(
                    _flag(
                        "volume",
                        f"{_names([x])} volume {vols[x]:.1f} ml is outside the plausible "
                        f"{region} range {lo:g}-{hi:g} ml",
                        [x],
                        vols[x],
                    )
                )

    boxes = ndimage.find_objects(arr)
    sp_zyx = tuple(float(v) for v in reversed(labels.GetSpacing()))
    frag = {
        x: _fragment_fraction(arr, x, boxes[x - 1], sp_zyx, th.fragment_join_voxels)
        for x in present
    }
    measures["fragment_fraction"] = {
        VERSE_NAMES.get(x, str(x)): round(f, 4) for x, f in frag.items()
    }
    # C1 not: a ring whose thin arches the grid loses leaves its two lateral masses ~25 mm
    # apart, one bone (C1 36-41 % outside its largest piece in correctly named predictions)
    bad = [x for x in present if frag[x] > th.fragment_fraction and x not in cut and x != ATLAS]
    for x in bad:
        flags.append(
            _flag(
                "fragmented",
                f"{_names([x])}: {100 * frag[x]:.1f} % of its voxels lie outside its largest "
                "connected piece",
                [x],
                frag[x],
            )
        )

    # Centroid spacing along the spine, against the natural step between the two levels
    # (ctseg.core.anatomy): a neck-to-pelvis case's lumbar steps are twice its cervical ones.
    steps = []
    for a, b in zip(present, present[1:], strict=False):
        if a in cut or b in cut or SACRUM in (a, b):
            continue  # the sacrum's centroid lies 1.6-1.9 L5-steps below L5's (its size)
        d = float(np.linalg.norm(np.subtract(by[a]["centroid"], by[b]["centroid"])))
        steps.append((a, b, d, d / natural_step_mm(a, b)))
    if steps:
        # the case's size: measured over natural step, the median over its steps
        scale = float(np.median([s[3] for s in steps]))
        measures["median_centroid_step_mm"] = round(float(np.median([s[2] for s in steps])), 3)
        measures["size_scale"] = round(scale, 4)
        for a, b, d, per in steps:
            ratio = per / scale if scale > 0 else float("inf")
            if d < th.spacing_min_mm or not th.spacing_ratio_low <= ratio <= th.spacing_ratio_high:
                flags.append(
                    _flag(
                        "centroid_spacing",
                        f"{_names([a])}-{_names([b])} centroids {d:.1f} mm apart, "
                        f"{ratio:.2f} x the step expected there "
                        f"({scale * natural_step_mm(a, b):.1f} mm at this case's size)",
                        [a, b],
                        ratio,
                    )
                )

    # Centroid path: each interior level near the midpoint of its neighbours (consecutive,
    # uncut levels only), relative to the step expected there. Not through C1: the atlas has
    # no body, its centroid lies in the ring's middle around the dens, and where the grid
    # keeps the dens and the arches decides where (C2 0.35-0.43 median steps off in correctly
    # named predictions, 0.23 at most in the population's truth).
    if steps:
        for n in range(1, len(present) - 1):
            a, x, b = present[n - 1], present[n], present[n + 1]
            if {a, x, b} & set(cut) or SACRUM in (a, b) or a == ATLAS or _gaps([a, x, b]):
                continue
            mid = (np.asarray(by[a]["centroid"]) + np.asarray(by[b]["centroid"])) / 2
            step = scale * natural_step_mm(a, b) / 2
            off = float(np.linalg.norm(np.asarray(by[x]["centroid"]) - mid)) / step
            if off > th.max_centroid_offset:
                flags.append(
                    _flag(
                        "centroid_offset",
                        f"{_names([x])} centroid lies {off * step:.1f} mm ({off:.2f} steps) "
                        f"off the line between {_names([a])} and {_names([b])}",
                        [x],
                        off,
                    )
                )

    conf = None
    if probabilities is not None:
        conf = confidence(probabilities, arr > 0)
    elif confidence_measures is not None:
        conf = {k: float(confidence_measures[k]) for k in ("mean_max_prob", "mean_entropy")}
    if conf is not None:
        measures.update({k: round(v, 4) for k, v in conf.items()})
        if (
            conf["mean_max_prob"] < th.min_mean_max_prob
            or conf["mean_entropy"] > th.max_mean_entropy
        ):
            flags.append(
                _flag(
                    "low_confidence",
                    f"mean max-probability {conf['mean_max_prob']:.2f} (min {th.min_mean_max_prob}), "
                    f"mean normalised entropy {conf['mean_entropy']:.2f} (max {th.max_mean_entropy})",
                    value=conf["mean_max_prob"],
                )
            )

    changed = None
    if raw_argmax is not None:
        raw = (
            sitk.GetArrayViewFromImage(raw_argmax)
            if isinstance(raw_argmax, sitk.Image)
            else np.asarray(raw_argmax)
        )
        if raw.shape != arr.shape:
            raise ValueError(f"raw_argmax shape {raw.shape} differs from labels {arr.shape}")
        fg = (raw > 0) | (arr > 0)
        changed = float(np.count_nonzero((raw != arr) & fg) / max(np.count_nonzero(fg), 1))
    elif relabelled_fraction is not None:
        changed = float(relabelled_fraction)
    if changed is not None:
        measures["relabelled_fraction"] = round(changed, 4)
        if changed > th.max_relabelled_fraction:
            flags.append(
                _flag(
                    "relabelled",
                    f"{100 * changed:.1f} % of the foreground changed label in the along-spine "
                    "relabelling (the network's own labels disagree with the level order)",
                    value=changed,
                )
            )

    if anatomy:
        measures["anatomy"] = anatomy
        flags.extend(anatomy_flags(anatomy, th))
    return {
        "trusted": not flags,
        "flags": flags,
        "notes": notes,
        "measures": measures,
        "thresholds": asdict(th),
    }


def beyond_end_bone(end: np.ndarray, neighbour: np.ndarray, ct: sitk.Image) -> float | None:
    """Share of bone (>= 200 HU) in the cylinder past ``end`` (world LPS mm) along the line
    from ``neighbour``: 0.5-1.2 steps out (where the next vertebra would be), radius
    0.4 steps (a vertebral body's half-width, short of the rib heads); None when any of it
    lies outside the image (a level whose centroid is out of view is not one the scan
    shows). The share, not the mean: a centroid of a whole vertebra lies behind the body,
    often in the canal, so a thin core along the line reads CSF and disc."""
    step = np.asarray(end, dtype=float) - np.asarray(neighbour, dtype=float)
    length = float(np.linalg.norm(step))
    if length < 1.0:
        return None
    axis = step / length
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    ring = [np.zeros(3)] + [
        0.4 * length * r * (np.cos(a) * u + np.sin(a) * v)
        for r in (0.25, 0.5, 0.75, 1.0)
        for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)
    ]
    pts = np.array([np.asarray(end) + t * step + o for t in np.linspace(0.5, 1.2, 8) for o in ring])
    idx = world_to_index(ct, pts)
    if not inside(ct, idx).all():
        return None
    arr = sitk.GetArrayViewFromImage(ct)
    vals = ndimage.map_coordinates(arr, idx[:, ::-1].T, order=1, mode="nearest")
    return float(np.mean(vals >= 200.0))


def unlabelled_ends(rows: list[dict], ct: sitk.Image, th: QCThresholds | None = None) -> list[dict]:
    """The ``unlabelled_end`` flag (module docstring) from :func:`vertebra_statistics` rows
    (spine order) and the CT; at most one, naming the end level(s) concerned."""
    th = th or QCThresholds()
    if len(rows) < 2:
        return []
    ends = []
    if rows[0]["label"] != 1:
        ends.append(("above", rows[0], rows[1]))
    if rows[-1]["label"] != SACRUM:
        ends.append(("below", rows[-1], rows[-2]))
    hits = []
    for where, end, nb in ends:
        share = beyond_end_bone(np.asarray(end["centroid"]), np.asarray(nb["centroid"]), ct)
        if share is not None and share >= th.end_bone_fraction:
            hits.append((where, end, share))
    if not hits:
        return []
    what = "; ".join(
        f"{where} {VERSE_NAMES.get(end['label'], end['label'])} "
        f"({100 * share:.0f} % bone one step out)"
        for where, end, share in hits
    )
    return [
        _flag(
            "unlabelled_end",
            f"the spine goes on inside the field of view with nothing labelled: {what}; a "
            "level there was not segmented or not named",
            [end["label"] for _, end, _ in hits],
            value=max(share for _, _, share in hits),
        )
    ]


def anatomy_flags(rows: list[dict], th: QCThresholds | None = None) -> list[dict]:
    """The ``anatomy`` and ``unanchored`` flags (module docstring) from region-network rows
    ``[{"label", "expected", "seen", "p_seen", "p_expected"}]``; at most one of each."""
    th = th or QCThresholds()
    bad = [
        r
        for r in rows
        if r["seen"] != r["expected"]
        and r["p_seen"] >= th.anatomy_min_seen
        and r["p_expected"] <= th.anatomy_max_expected
    ]
    out = [] if not bad else [_anatomy_disagrees(bad)]
    anchors = [r for r in rows if r["expected"] in ANCHOR_CLASSES]
    if rows and not any(r["p_expected"] >= th.anchor_min_p for r in anchors):
        if anchors:
            best = max(anchors, key=lambda r: r["p_expected"])
            why = (
                f"no level called {', '.join(sorted({r['expected'] for r in anchors}))} looks "
                f"like it (best: {VERSE_NAMES.get(best['label'], best['label'])} as "
                f"{best['expected']}, p {best['p_expected']:.2f} < {th.anchor_min_p})"
            )
        else:
            why = "no level in view is one that its anatomy names alone"
        out.append(
            _flag(
                "unanchored",
                f"no anatomical anchor confirms the naming: {why}; the levels are counted "
                "from the field of view alone and may all be off by one or more",
                [r["label"] for r in anchors],
                value=max((r["p_expected"] for r in anchors), default=0.0),
            )
        )
    return out


def _anatomy_disagrees(bad: list[dict]) -> dict:
    what = "; ".join(
        f"{VERSE_NAMES.get(r['label'], r['label'])} looks like {r['seen']} (p {r['p_seen']:.2f}), "
        f"not {r['expected']} (p {r['p_expected']:.2f})"
        for r in bad
    )
    return _flag(
        "anatomy",
        f"the anatomy disagrees with the naming: {what}",
        [r["label"] for r in bad],
        value=max(r["p_seen"] for r in bad),
    )
