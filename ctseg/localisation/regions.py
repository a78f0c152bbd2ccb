"""The localiser's anatomical anchors: which part of the spine each refined vertebra is.

Why: the first stage names vertebrae from the whole field of view at 8 mm, where a rib is a
fraction of a voxel, and measured on held-out population draws its failures are whole chains
named one or two levels off (small bodies, fine voxels, crops), the points themselves a median
1-2 mm from the truth. Radiologists count from anchors -- C2's dens, the first and the last rib
pair, the sacrum -- and those are *local*: a 160 mm cube at 5 mm around a vertebra shows whether
ribs leave it, whether the sacrum or the skull base is next to it. This network (a small 3D
U-Net on such cubes) classifies the vertebra at the cube's centre into :data:`REGIONS`, eleven
appearance classes that are easy to tell apart locally (unlike T5 from T6, which the refiner's
level head could not learn, see the README), and its probabilities multiply into the first
stage's level evidence before the levels are chosen along the chain, so one anchor in the chain
fixes the names of all its points.

Training uses the training cases' CTs and centroids only (the centroid-only contract): cubes
around a centroid drawn evenly over the levels, jittered, rotated, scaled (body size) and
mirrored; every voxel within ``radius_mm`` of a centroid is a target of that centroid's class.
The class of a level depends on the case's own levels where transitional anatomy shows in
them (with a T13, T12 carries the second-last rib pair; with an L6, L5 is not the last lumbar).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ctseg.core.errors import ConfigError
from ctseg.core.labels import SACRUM, VERSE_IDS, VERSE_NAMES
from ctseg.localisation.geometry import world_to_index
from ctseg.localisation.refine import RefinerTrainer, crop_patch, resolve_patch_block

T10, T11, T12, T13, L4, L5, L6 = (
    VERSE_IDS[n] for n in ("T10", "T11", "T12", "T13", "L4", "L5", "L6")
)
_NORMAL = [*range(VERSE_IDS["C1"], VERSE_IDS["L5"] + 1), SACRUM]  # head to feet, no T13 / L6


class RegionClasses:
    """A taxonomy of the region network: class names head to feet, each a run of the normal
    spine's levels (``"C3-C6"``, ``"T1"``, ``"sacrum"``), and last ``"none"`` (no vertebra
    centre here). Every level C1-L5 and the sacrum belongs to exactly one class; T13 and L6
    share their normal neighbour's (T12's, L5's), except where :meth:`of_case` moves a case's
    levels by its transitional anatomy. The package stores the names (``plan["regions"]
    ["classes"]``), so a network trained with one taxonomy is decoded with it."""

    def __init__(self, names):
        self.names = tuple(str(n) for n in names)
        if len(self.names) < 2 or self.names[-1] != "none" or "none" in self.names[:-1]:
            raise ConfigError(
                f"region classes must end with 'none' (and hold it once), got {list(self.names)}"
            )
        base: dict[int, int] = {}
        for i, name in enumerate(self.names[:-1]):
            first, _, last = name.partition("-")
            try:
                a, b = VERSE_IDS[first], VERSE_IDS[last or first]
            except KeyError:
                raise ConfigError(
                    f"region class {name!r}: not a level or a run of levels"
                ) from None
            if a not in _NORMAL or b not in _NORMAL or _NORMAL.index(b) < _NORMAL.index(a):
                raise ConfigError(f"region class {name!r}: not a run of the normal spine's levels")
            for v in _NORMAL[_NORMAL.index(a) : _NORMAL.index(b) + 1]:
                if v in base:
                    raise ConfigError(f"region class {name!r}: {VERSE_NAMES[v]} is in two classes")
                base[v] = i
        missing = [VERSE_NAMES[v] for v in _NORMAL if v not in base]
        if missing:
            raise ConfigError(f"region classes {list(self.names)} leave out {', '.join(missing)}")
        if [base[v] for v in _NORMAL] != sorted(base[v] for v in _NORMAL):
            raise ConfigError(f"region classes {list(self.names)} are not in head-to-feet order")
        base[T13], base[L6] = base[T12], base[L5]
        self.base = base
        self.none = len(self.names) - 1
        self.sacrum = base[SACRUM]

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other) -> bool:
        return isinstance(other, RegionClasses) and other.names == self.names

    def __hash__(self) -> int:
        return hash(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def of_case(self, labels) -> dict[int, int]:
        """Level id -> class index, for a case whose levels are ``labels``: with a T13 shown,
        T12 carries the second-last rib pair (T11's class) and T11 takes T10's class; with an
        L6 shown, L5 is a middle lumbar level (L4's class)."""
        labels = {int(v) for v in labels}
        out = dict(self.base)
        if T13 in labels:
            out[T12], out[T11] = self.base[T11], self.base[T10]
        if L6 in labels:
            out[L5] = self.base[L4]
        return out


#: Appearance classes (the default taxonomy): C1, C2, C3-C6, C7 (no rib, above the first rib),
#: T1 (the first rib pair), T2-T10, T11 (the second-last rib pair), T12 (the last rib pair),
#: L1-L4, L5 (the last lumbar, on the sacrum), the sacrum -- and "none": no vertebra centre
#: here (a ghost between two vertebrae, the pelvis, a rib), learnt from background cubes like
#: the refiner's.
REGIONS = (
    "C1", "C2", "C3-C6", "C7", "T1", "T2-T10", "T11", "T12", "L1-L4", "L5", "sacrum", "none",
)  # fmt: skip
#: A taxonomy with the thorax in three (``regions: {classes: [...]}``): T2-T4 (the lung apex,
#: above the heart), T5-T7 (beside the heart), T8-T10 (the diaphragm's domes, shortening
#: ribs). Why it exists: a view of T3-T10 holds none of the one-level anchors, and held-out
#: mid-spine crops were named one to three levels off. Why it is not the default: measured on
#: stored outputs of four held-out seed sets, two networks of each taxonomy, it identified
#: 93.3 % against 92.9 % (README) -- within what retraining one network moves -- its one-level
#: anchors were less sure, and a QC rule reading its boundaries let more shifted namings by.
REGIONS_THORAX3 = (
    "C1", "C2", "C3-C6", "C7", "T1", "T2-T4", "T5-T7", "T8-T10", "T11", "T12", "L1-L4", "L5",
    "sacrum", "none",
)  # fmt: skip
DEFAULT_CLASSES = RegionClasses(REGIONS)


def classes_of(spec: dict | None) -> RegionClasses:
    """The taxonomy a package's region network was trained with (``spec``: its
    ``plan["regions"]``); :data:`REGIONS` for one written before packages named it."""
    names = (spec or {}).get("classes")
    return RegionClasses(names) if names else DEFAULT_CLASSES


#: Keys of the ``regions`` block of a localiser config, with defaults.
REGIONS_DEFAULTS: dict = {
    "spacing_mm": [5.0, 5.0, 5.0],
    "patch": 32,
    "radius_mm": 10.0,
    "offset_mm": 6.0,
    "scale": [0.75, 1.3],  # zoom range of the cubes (body size)
    "rotate_deg": 10.0,
    "intensity_jitter": 0.1,
    "background_prob": 0.2,  # cubes centred off the vertebrae: class "none" at their centre
    "hard_negative_mm": 30.0,  # half of those on bone this far from every centroid
    "balance_levels": True,
    "batch_size": 8,
    "steps": 600,
    "lr": 3e-3,
    "classes": list(REGIONS),  # the taxonomy (:class:`RegionClasses`), ending with "none"
    "model": "unet3d",
    "base_width": 8,
    "depth": 4,
    "norm": "instance",
    # decoding: exponent of the region evidence in the product with the first stage's
    "weight": 1.0,
    # decoding: the first stage's evidence mixed with this share of a uniform (:func:`combine`);
    # 0.85 against 0.4 on stored outputs of five region networks x four held-out seed sets:
    # +1.7 points mean, better or equal for every network (README)
    "first_stage_floor": 0.85,
    # decoding: the chain's consecutive bonus (an anchor renames the chain only when one
    # break in it costs more than any one point's preference) and expected steps over gaps
    "chain_bonus": 1.0,
    "chain_steps": True,
    # decoding: points whose "none" probability exceeds this are not vertebrae (dropped)
    "none_drop": 0.5,
    # decoding: points this far below a point seen as the sacrum (p >= 0.5) are dropped
    "below_sacrum_mm": 30.0,
}
#: Keys read only when decoding.
REGIONS_DECODE_KEYS = (
    "weight",
    "first_stage_floor",
    "chain_bonus",
    "chain_steps",
    "none_drop",
    "below_sacrum_mm",
)


def resolve_regions(config) -> dict | None:
    """The regions block with defaults; None when disabled (``false`` / ``null``)."""
    positive = ("radius_mm", "lr", "weight", "hard_negative_mm")
    out = resolve_patch_block("regions", config, REGIONS_DEFAULTS, 16, positive)
    if out is None:
        return None
    lo, hi = (float(v) for v in out["scale"])
    if not 0 < lo <= hi:
        raise ConfigError(
            f"config key 'regions.scale' must be [low, high] with 0 < low <= high, got {out['scale']}"
        )
    out["scale"] = [lo, hi]
    out["classes"] = list(RegionClasses(out["classes"]).names)
    if not 0 <= float(out["background_prob"]) < 1:
        raise ConfigError("config key 'regions.background_prob' must be in [0, 1)")
    if not 0 <= float(out["first_stage_floor"]) <= 1:
        raise ConfigError("config key 'regions.first_stage_floor' must be in [0, 1]")
    if not 0 < float(out["none_drop"]) <= 1:
        raise ConfigError("config key 'regions.none_drop' must be in (0, 1]")
    return out


def level_likelihood(
    region_p: np.ndarray, levels: list[int], classes: RegionClasses = DEFAULT_CLASSES
) -> np.ndarray:
    """``[n, len(levels)]``: region probabilities ``[n, len(classes)]`` as evidence per level.

    Trained with levels drawn evenly, the network's class prior is each class's share of the
    levels, so the likelihood ratio of a level is its class's probability divided by the
    number of levels in that class (the first stage's softmax tells the levels inside a class
    apart). Transitional levels share their normal neighbour's class."""
    cls = np.array([classes.base[int(v)] for v in levels])
    size = np.bincount(cls, minlength=len(classes)).astype(float)
    p = np.asarray(region_p, dtype=float)
    none = classes.none
    p = p[:, :none] / np.clip(p[:, :none].sum(axis=1, keepdims=True), 1e-12, None)
    return p[:, cls] / np.maximum(size[cls], 1.0)


def combine(
    votes: np.ndarray,
    region_p: np.ndarray,
    levels: list[int],
    weight: float,
    first_stage_floor: float = 0.0,
    classes: RegionClasses = DEFAULT_CLASSES,
) -> np.ndarray:
    """Product of experts: first-stage level evidence times region evidence ** ``weight``,
    renormalised per point (so a point's strength for the chain's DP stays in [0, 1]), then
    scaled by the point's probability of being a vertebra at all (1 - "none").

    ``first_stage_floor`` (eps): the first stage's evidence is taken as the mixture
    ``(1 - eps) * votes + eps / n_levels`` -- "right, or knowing nothing" -- before the
    product. Why: on views it never learnt (a neck alone, C1-C5), the first stage gives the
    true levels almost nothing (C1, C2 below 0.01, every point "C7" at 0.3), and a product
    with a near-zero factor cannot be rescued by any anchor the region network sees."""
    if not len(votes):
        return votes
    lik = level_likelihood(region_p, levels, classes)
    lik = np.power(np.clip(lik, 1e-6, None), float(weight))
    eps = float(first_stage_floor)
    first = (1.0 - eps) * np.asarray(votes, dtype=float) + eps / votes.shape[1]
    out = first * lik
    out = out / np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)
    return out * (1.0 - none_prob(region_p, classes))[:, None]


def below_sacrum(
    worlds: list,
    region_p: np.ndarray,
    p_min: float,
    margin_mm: float,
    classes: RegionClasses = DEFAULT_CLASSES,
) -> np.ndarray:
    """Per point, whether it lies more than ``margin_mm`` below (world z, LPS superior) the
    most cranial point the region network calls the sacrum with probability >= ``p_min``.

    Why: the sacrum is the last level, so nothing below it is a vertebra -- but the refiner
    fires on the coccyx and the pelvis there, the region network (which learnt "none" from
    random bone, rarely from exactly there) calls those points "L5", and the chain's DP then
    renumbered the whole lumbar spine to fit them in (measured on held-out draws: two of
    three lower-spine failures)."""
    out = np.zeros(len(worlds), dtype=bool)
    if not len(worlds):
        return out
    p = np.asarray(region_p, dtype=float)
    sac = classes.sacrum
    z = np.array([float(w[2]) for w in worlds])
    hits = (p.argmax(axis=1) == sac) & (p[:, sac] >= p_min)
    if hits.any():
        out = z < z[hits].max() - float(margin_mm)
    return out


def one_sacrum(
    worlds: list,
    region_p: np.ndarray,
    max_gap: float = 0.8,
    classes: RegionClasses = DEFAULT_CLASSES,
) -> np.ndarray:
    """Keep-mask over head-to-feet points: of neighbours in the chain that the region network
    both calls the sacrum (its arg-max), closer than ``max_gap`` times the chain's median gap,
    only the one with the highest sacrum probability stays.

    Why: the sacrum is one bone, 100 mm long in an adult, and the refiner fires on its S1, S2
    and S3 bodies like on vertebrae; three "sacrum" points 12-17 mm apart at the end of a
    lumbar chain were absorbed by naming the chain with a T13 and an L6 and every lumbar level
    one off (held-out body_large and transitional draws). A real L5 seen as the sacrum lies a
    whole lumbar step or more above it and is not merged."""
    n = len(worlds)
    keep = np.ones(n, dtype=bool)
    p = np.asarray(region_p, dtype=float)
    sac = classes.sacrum
    if n < 3 or p.shape[1] <= sac:
        return keep
    w = np.asarray(worlds, dtype=float)
    limit = float(max_gap) * float(np.median(np.linalg.norm(np.diff(w, axis=0), axis=1)))
    is_sac = p.argmax(axis=1) == sac
    best = None  # the kept point of the current run of close "sacrum" points
    for i in range(n):
        if not is_sac[i]:
            best = None
        elif best is not None and np.linalg.norm(w[i] - w[i - 1]) < limit and is_sac[i - 1]:
            weaker = i if p[i, sac] <= p[best, sac] else best
            keep[weaker] = False
            best = best if weaker == i else i
        else:
            best = i
    return keep


def none_prob(region_p: np.ndarray, classes: RegionClasses = DEFAULT_CLASSES) -> np.ndarray:
    """Per point, the probability of "none" (0 for a network trained without that class)."""
    p = np.asarray(region_p, dtype=float)
    return p[:, classes.none] if p.shape[1] > classes.none else np.zeros(len(p))


def _rotation(angles_deg) -> np.ndarray:
    from ctseg.localisation.training import rotation_zyx

    return rotation_zyx(list(angles_deg))


class RegionTrainer(RefinerTrainer):
    """Trains the region network on transformed cubes around centroids (checkpoint
    ``regions.pt``); everything else as the refiner's trainer."""

    name = "regions"
    decode_keys = REGIONS_DECODE_KEYS

    def __init__(
        self,
        items: list[dict],
        cfg: dict,
        out_dir,
        seed: int,
        device,
        autocast=None,
        channels_last: bool = False,
    ):
        self.taxonomy = RegionClasses(cfg["classes"])  # before the network is built
        super().__init__(items, cfg, out_dir, seed, device, autocast, channels_last)
        levels = list(cfg["levels"])
        self.classes = []
        for c in self.cases:
            labs = [levels[ch] for ch in c.channels]
            m = self.taxonomy.of_case(labs)
            self.classes.append(np.array([m[v] for v in labs], dtype=np.int64))
        size = int(cfg["patch"])
        self.grid = np.indices((size,) * 3, dtype=np.float32).reshape(3, -1).T - (size - 1) / 2

    def n_outputs(self) -> int:
        return len(self.taxonomy)

    def init_head(self) -> None:
        return None

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, g, size = self.cfg, self.gen, int(self.cfg["patch"])
        lo, hi = cfg["scale"]
        radius = float(cfg["radius_mm"]) / float(cfg["spacing_mm"][0])
        xs, ys = [], []
        for _ in range(int(cfg["batch_size"])):
            i, k = self.pairs[int(g.choice(len(self.pairs), p=self.pair_p))]
            c = self.cases[i]
            s = math.exp(g.uniform(math.log(lo), math.log(hi)))
            rot = _rotation(g.uniform(-1, 1, 3) * float(cfg["rotate_deg"]))
            centre = c.points[k] + g.uniform(-1, 1, 3) * float(cfg["offset_mm"]) / c.sp
            background = g.random() < float(cfg["background_prob"])
            if background:
                pool = c.hard if len(c.hard) and g.random() < 0.5 else c.body
                centre = pool[int(g.integers(len(pool)))].astype(float)
            src = centre + (self.grid * s) @ rot.T
            img = ndimage.map_coordinates(c.image, src.T, order=1, mode="constant", cval=0.0)
            img = img.reshape((size,) * 3).astype(np.float32)
            q = (c.points - centre) @ rot / s + (size - 1) / 2  # centroids in patch voxels
            cls = self.classes[i]
            if background:  # "none" at the centre unless a centroid is as near
                q, cls = np.vstack([q, [(size - 1) / 2] * 3]), np.append(cls, self.taxonomy.none)
            tgt = self._target(q, cls, size, radius / s)
            if g.random() < 0.5:  # left-right mirror: the classes are symmetric
                img, tgt = img[..., ::-1], tgt[..., ::-1]
            img = img * (1.0 + float(cfg["intensity_jitter"]) * g.uniform(-1, 1))
            xs.append(img.copy())
            ys.append(tgt.copy())
        x = torch.from_numpy(np.stack(xs)[:, None]).to(self.dev)
        y = torch.from_numpy(np.stack(ys)).to(self.dev)
        return x, y

    def _target(self, q: np.ndarray, cls: np.ndarray, size: int, radius: float) -> np.ndarray:
        """Class of the nearest centroid within ``radius`` patch voxels, -100 elsewhere."""
        out = np.full(size**3, -100, dtype=np.int64)
        near = np.flatnonzero(np.all((q > -radius) & (q < size - 1 + radius), axis=1))
        if not len(near):
            return out.reshape((size,) * 3)
        vox = self.grid + (size - 1) / 2
        d = np.linalg.norm(vox[:, None, :] - q[near][None], axis=2)
        j = np.argmin(d, axis=1)
        hit = d[np.arange(len(d)), j] <= radius
        out[hit] = cls[near][j[hit]]
        return out.reshape((size,) * 3)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, ignore_index=-100)


def regions_spec(cfg: dict) -> dict:
    """What the package stores to apply the region network (``plan["regions"]``)."""
    keys = ("spacing_mm", "patch", "hu_window", "classes", *REGIONS_DECODE_KEYS)
    return {k: cfg[k] for k in keys}


@torch.no_grad()
def region_probs(
    model, spec: dict, work, arr: np.ndarray, worlds: list, device, autocast=nullcontext
) -> np.ndarray:
    """``[n, len(classes)]``: the class softmax around each world point (mean of the 3^3
    voxels at the point), averaged with the left-right mirrored cube; the forward passes under
    ``autocast`` (a context factory)."""
    size = int(spec["patch"])
    if not worlds:
        return np.zeros((0, int(model.head.out_channels)))
    half = size // 2
    starts = [np.rint(world_to_index(work, w)).astype(int) - half for w in worlds]
    out = []
    for i in range(0, len(starts), 16):
        x = torch.from_numpy(np.stack([crop_patch(arr, s, size) for s in starts[i : i + 16]]))
        x = x[:, None].to(device)
        with autocast():
            a, b = model(x), model(x.flip(-1))
        p = torch.softmax(a.float(), dim=1) + torch.softmax(b.float(), dim=1).flip(-1)
        out.append(p[:, :, half - 1 : half + 2, half - 1 : half + 2, half - 1 : half + 2])
    win = torch.cat(out).mean(dim=(2, 3, 4)).cpu().numpy().astype(float)
    return win / win.sum(axis=1, keepdims=True)


def anatomy_rows(localiser: tuple, ct, centroids: list[dict]) -> list[dict]:
    """What the region network sees at each labelled vertebra of a prediction, against what
    its label implies: ``[{"label", "expected", "seen", "p_seen", "p_expected"}]`` (class names
    of the package's :class:`RegionClasses`). Empty when the localiser has no region network.

    Why: a whole spine named one level off is consecutive, evenly spaced and plausibly sized,
    so the plausibility checks of :mod:`ctseg.formats.qc` cannot see it; whether the vertebra
    called T12 carries the last ribs, or the one called L5 sits on the sacrum, can.
    ``localiser``: a loaded ``(model, meta)`` pair; ``centroids``: ``[{"label", "world"}]``
    in world LPS mm of ``ct``."""
    from ctseg.localisation.geometry import read_ct
    from ctseg.localisation.refine import fine_image

    _model, meta = localiser
    net = (meta.get("subnet_modules") or {}).get("regions")
    if net is None or not centroids:
        return []
    from ctseg.localisation.predict import forward_precision, network_input

    spec = meta["regions"]
    work, arr = fine_image(network_input(read_ct(ct), meta), spec)
    device = next(net.parameters()).device
    worlds = [c["world"] for c in centroids]
    probs = region_probs(net, spec, work, arr, worlds, device, forward_precision(meta, device))
    labels = [int(c["label"]) for c in centroids]
    classes = classes_of(spec)
    expected = classes.of_case(labels)
    rows = []
    for lab, p in zip(labels, probs, strict=True):
        if lab not in expected:
            continue
        e, s = expected[lab], int(np.argmax(p))
        rows.append(
            {
                "label": lab,
                "expected": classes.names[e],
                "seen": classes.names[s],
                "p_seen": round(float(p[s]), 4),
                "p_expected": round(float(p[e]), 4),
            }
        )
    return rows


__all__ = [
    "DEFAULT_CLASSES",
    "REGIONS",
    "REGIONS_THORAX3",
    "RegionClasses",
    "classes_of",
    "anatomy_rows",
    "REGIONS_DEFAULTS",
    "RegionTrainer",
    "below_sacrum",
    "combine",
    "one_sacrum",
    "level_likelihood",
    "none_prob",
    "region_probs",
    "regions_spec",
    "resolve_regions",
]
