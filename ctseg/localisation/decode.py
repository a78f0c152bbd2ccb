"""Heatmaps -> at most one centroid per level, consistent along the spine.

Why two steps: a per-level channel may fire on the neighbour of its vertebra (vertebrae look
alike; what tells them apart is their place in the column), so first every vertebra is
*detected* (:func:`ctseg.localisation.heatmaps.detect_points`: local maxima of the
channel-wise maximum), then the detected points, ordered head to feet, get strictly
increasing levels chosen by dynamic programming over the heatmap evidence -- the same
consistency step as the segmentation path, by calling
:func:`ctseg.inference.predict.assign_increasing_ids` itself (votes = each channel's heatmap
value at the point, one unit of "size" per point so a consecutive step earns
``consecutive_bonus``).

Transitional anatomy: T13 (VerSe 28) sits between T12 and L1, L6 (25) after L5. With those in
the level set a plain DP would see T12 -> L1 as a skipped level and lose the consecutive bonus
on every normal spine, so each optional level is a *hypothesis*: the DP runs once per
vocabulary (with / without T13, with / without L6; unchanged
:func:`assign_increasing_ids`) and the vocabulary whose best assignment scores highest wins.
A transitional vertebra is thus output only when its channel's evidence beats renumbering.
"""

from __future__ import annotations

from itertools import product

import numpy as np

from ctseg.core.labels import VERSE_IDS, VERSE_NAMES
from ctseg.inference.predict import assign_increasing_ids

#: VerSe ids in anatomical order, head to feet (T13 between T12 and L1, L6 after L5).
SPINE_ORDER: tuple[int, ...] = (*range(1, 20), 28, *range(20, 25), 25, 26)
#: Levels that exist only in transitional anatomy.
OPTIONAL_LEVELS: tuple[int, ...] = (28, 25)


def resolve_levels(levels) -> list[int]:
    """Level ids in spinal order from names/ids (``["T1", ..]``, ``[8, ..]`` or ``"T1-L5"``).

    The order is the network's channel order, so a strictly increasing channel index is a
    head-to-feet sequence of levels."""
    if isinstance(levels, str):
        if "-" not in levels:
            levels = [levels]
        else:
            a, b = (s.strip() for s in levels.split("-", 1))
            ia, ib = SPINE_ORDER.index(VERSE_IDS[a]), SPINE_ORDER.index(VERSE_IDS[b])
            if ia > ib:
                raise ValueError(f"level range {levels!r} runs feet to head")
            return [v for v in SPINE_ORDER[ia : ib + 1] if v not in OPTIONAL_LEVELS]
    ids = []
    for v in levels:
        if isinstance(v, str) and not v.isdigit():
            if v not in VERSE_IDS:
                raise ValueError(f"unknown vertebra {v!r}")
            ids.append(VERSE_IDS[v])
        else:
            ids.append(int(v))
    bad = [v for v in ids if v not in SPINE_ORDER]
    if bad:
        raise ValueError(f"levels {bad} are not vertebrae C1-L6/T13/sacrum")
    if len(set(ids)) != len(ids):
        raise ValueError("levels repeat")
    return sorted(ids, key=SPINE_ORDER.index)


def _score(votes: np.ndarray, chosen: list[int], bonus: float) -> float:
    s = float(sum(votes[k, v] for k, v in enumerate(chosen)))
    return s + bonus * sum(1 for a, b in zip(chosen, chosen[1:], strict=False) if b == a + 1)


def assign_levels(
    votes: np.ndarray, levels: list[int], consecutive_bonus: float = 0.25
) -> list[int]:
    """Levels (VerSe ids, strictly increasing along ``levels``' spinal order) for points already
    ordered head to feet, maximising the summed evidence ``votes[k, channel]`` plus
    ``consecutive_bonus`` per consecutive step, with T13 / L6 as hypotheses (module docstring).

    More points than levels: the weakest points (lowest best vote) are dropped, their entry in
    the result is None.
    """
    votes = np.asarray(votes, dtype=float)
    n = len(votes)
    if n == 0:
        return []
    if votes.shape[1] != len(levels):
        raise ValueError(f"votes have {votes.shape[1]} channels for {len(levels)} levels")
    keep = np.arange(n)
    if n > len(levels):
        strongest = np.sort(np.argsort(-votes.max(axis=1), kind="stable")[: len(levels)])
        keep = strongest
    kv = votes[keep]
    optional = [v for v in OPTIONAL_LEVELS if v in levels]
    best: tuple[float, list[int]] | None = None
    for mask in product((False, True), repeat=len(optional)):
        dropped = {v for v, use in zip(optional, mask, strict=True) if not use}
        cols = [i for i, v in enumerate(levels) if v not in dropped]
        if len(keep) > len(cols):
            continue
        sub = kv[:, cols]
        chosen = assign_increasing_ids(sub, np.ones(len(keep)), consecutive_bonus)
        score = _score(sub, chosen, consecutive_bonus)
        if best is None or score > best[0] + 1e-12:
            best = (score, [levels[cols[c]] for c in chosen])
    assert best is not None  # the full vocabulary always fits len(keep) <= len(levels)
    out: list[int | None] = [None] * n
    for k, lab in zip(keep, best[1], strict=True):
        out[int(k)] = lab
    return out


def level_name(label: int) -> str:
    return VERSE_NAMES.get(int(label), str(int(label)))
