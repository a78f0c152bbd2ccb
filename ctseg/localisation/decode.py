"""Heatmaps -> at most one centroid per level, consistent along the spine.

Why two steps: a per-level channel may fire on the neighbour of its vertebra (vertebrae look
alike; what tells them apart is their place in the column), so first every vertebra is
*detected* (:func:`ctseg.localisation.heatmaps.detect_points`: local maxima of the
per-channel local maxima), then the detected points, ordered head to feet, get strictly
increasing levels chosen by dynamic programming over the heatmap evidence -- the same
consistency step as the segmentation path (votes = each channel's heatmap value at the point,
one unit of "size" per point so a consecutive step earns ``consecutive_bonus``). The DP is
:func:`increasing_ids_with_skips`, a generalisation of
:func:`ctseg.inference.predict.assign_increasing_ids` (same objective) that may leave a point
out: a heatmap detection, unlike a segmented instance, can be a ghost between two vertebrae,
and forcing it into the sequence would shift every level below it. ``allow_skips=False``
calls :func:`assign_increasing_ids` itself.

Transitional anatomy: T13 (VerSe 28) sits between T12 and L1, L6 (25) after L5. With those in
the level set a plain DP would see T12 -> L1 as a skipped level and lose the consecutive bonus
on every normal spine, so each optional level is a *hypothesis*: the DP runs once per
vocabulary (with / without T13, with / without L6) and the vocabulary whose best assignment scores highest wins.
A transitional vertebra is thus output only when its channel's evidence beats renumbering.
"""

from __future__ import annotations

from itertools import product

import numpy as np

from ctseg.core.labels import SPINE_ORDER, VERSE_IDS, VERSE_NAMES
from ctseg.inference.postprocess import assign_increasing_ids

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


def _score(
    votes: np.ndarray,
    chosen: list[int | None],
    bonus: float,
    sizes=None,
    skip_cost=None,
    steps=None,
) -> float:
    """Objective of an assignment (None = skipped point): summed votes, plus ``bonus`` times
    the point's size for each assigned point whose id follows the previous assigned one's
    by the expected step (``steps[prev_point, point]``, default 1), minus the ``skip_cost``
    of each skipped point."""
    sizes = np.ones(len(votes)) if sizes is None else sizes
    skip_cost = np.zeros(len(votes)) if skip_cost is None else skip_cost
    total, prev, kprev = 0.0, None, None
    for k, v in enumerate(chosen):
        if v is None:
            total -= float(skip_cost[k])
            continue
        total += float(votes[k, v])
        step = 1 if steps is None or kprev is None else int(steps[kprev][k])
        if prev is not None and v == prev + step:
            total += bonus * float(sizes[k])
        prev, kprev = v, k
    return total


def chain_steps(worlds) -> np.ndarray:
    """``[n, n]``: how many levels apart points i < j of a head-to-feet chain should be, from
    their distance over the chain's local spacing (the median of the five neighbouring gaps):
    a vertebra missed between two points makes them two levels apart, and the consecutive
    bonus then rewards the gap instead of renumbering every level below it. Points closer than
    half a spacing get 0: two detections of one vertebra, of which the bonus rewards neither
    following the other (one of them is skipped, or both named at no bonus)."""
    w = np.asarray(worlds, dtype=float).reshape(-1, 3)
    n = len(w)
    out = np.ones((n, n), dtype=int)
    if n < 3:
        return out
    d = np.linalg.norm(np.diff(w, axis=0), axis=1)
    local = np.array([np.median(d[max(0, i - 2) : i + 3]) for i in range(n - 1)])
    for i in range(n):
        for j in range(i + 1, n):
            dist = np.linalg.norm(w[j] - w[i])
            out[i, j] = int(round(dist / max(local[i:j].min(), 1e-6)))
    return out


def increasing_ids_with_skips(
    votes: np.ndarray,
    sizes: np.ndarray,
    consecutive_bonus: float = 0.25,
    skip_cost: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> list[int | None]:
    """:func:`ctseg.inference.predict.assign_increasing_ids` generalised to leave points out.

    Same objective (votes of the chosen ids plus ``consecutive_bonus * sizes[k]`` for a step of
    exactly one id from the previous *assigned* point), same strictly increasing ids, but a
    point may be skipped (None) at ``skip_cost[k]`` (default 0). Why: a segmentation instance
    is a vertebra, but a heatmap detection can be a ghost between two vertebrae; forced into
    the sequence it would shift every level below it by one. Dynamic programming over
    (last assigned point, its id), O(n^2 m). ``steps[kp, k]``: the id step that earns the
    bonus between assigned points kp and k (default 1; :func:`chain_steps`).
    """
    votes = np.asarray(votes, dtype=float)
    n, m = votes.shape
    if n == 0:
        return []
    cost = np.zeros(n) if skip_cost is None else np.asarray(skip_cost, dtype=float)
    csum = np.concatenate([[0.0], np.cumsum(cost)])  # csum[b] - csum[a]: skipping a..b-1
    neg = -np.inf
    best = np.full((n, m), neg)
    back = np.full((n, m, 2), -1, dtype=int)  # (previous assigned point, its id); -1: first
    for k in range(n):
        best[k] = votes[k] - csum[k]  # k is the first assigned point
        for kp in range(k):
            prev = best[kp] - (csum[k] - csum[kp + 1])
            # running max of prev[:v] (ids strictly below v) and its argmax
            pm = np.full(m, neg)
            pa = np.zeros(m, dtype=int)
            run, arg = neg, 0
            for v in range(1, m):
                if prev[v - 1] > run:
                    run, arg = prev[v - 1], v - 1
                pm[v], pa[v] = run, arg
            st = 1 if steps is None else int(steps[kp][k])
            cons = np.full(m, neg)
            if 0 < st < m:
                cons[st:] = prev[:-st] + consecutive_bonus * sizes[k]
            take_cons = cons > pm
            cand = np.where(take_cons, cons, pm) + votes[k]
            from_u = np.where(take_cons, np.arange(m) - st, pa)
            better = cand > best[k]
            best[k] = np.where(better, cand, best[k])
            back[k, better, 0] = kp
            back[k, better, 1] = from_u[better]
    final = best - (csum[n] - csum[1:])[:, None]  # minus skipping everything after k
    k, v = np.unravel_index(int(np.argmax(final)), final.shape)
    if not final[k, v] > -csum[n]:  # skipping every point is at least as good
        return [None] * n
    out: list[int | None] = [None] * n
    while k >= 0:
        out[int(k)] = int(v)
        k, v = back[k, v]
    return out


def assign_levels(
    votes: np.ndarray,
    levels: list[int],
    consecutive_bonus: float = 0.25,
    allow_skips: bool = True,
    skip_weight: float = 1.0,
    optional_cost: float = 0.0,
    steps: np.ndarray | None = None,
) -> list[int | None]:
    """Levels (VerSe ids, strictly increasing along ``levels``' spinal order) for points already
    ordered head to feet, maximising the summed evidence ``votes[k, channel]`` plus
    ``consecutive_bonus`` per consecutive step, with T13 / L6 as hypotheses (module docstring).

    ``allow_skips`` (default): points the sequence does not support get None
    (:func:`increasing_ids_with_skips`; skipping a point costs ``skip_weight`` times its best
    vote, so a strong detection is kept and renumbered rather than dropped, and a weak ghost
    is dropped rather than shifting the levels below it); otherwise every point is assigned with
    :func:`ctseg.inference.predict.assign_increasing_ids` itself, and with more points than
    levels the weakest points (lowest best vote) get None.

    ``optional_cost``: what an assignment pays for each transitional level (T13, L6) it uses,
    a prior against them. Why: with the hypotheses free, one spurious point below the sacrum
    was absorbed by calling L1 "T13" and renumbering every lumbar level (measured on held-out
    draws: most lower-spine failures were exactly this).

    ``steps`` (:func:`chain_steps`, with ``allow_skips``): the expected id step between two
    points for the consecutive bonus, instead of 1.
    """
    votes = np.asarray(votes, dtype=float)
    n = len(votes)
    if n == 0:
        return []
    if votes.shape[1] != len(levels):
        raise ValueError(f"votes have {votes.shape[1]} channels for {len(levels)} levels")
    keep = np.arange(n)
    if n > len(levels) and not allow_skips:
        keep = np.sort(np.argsort(-votes.max(axis=1), kind="stable")[: len(levels)])
    kv = votes[keep]
    ones = np.ones(len(keep))
    skip_cost = skip_weight * kv.max(axis=1) if allow_skips else None
    optional = [v for v in OPTIONAL_LEVELS if v in levels]
    best: tuple[float, list[int | None]] | None = None
    for mask in product((False, True), repeat=len(optional)):
        dropped = {v for v, use in zip(optional, mask, strict=True) if not use}
        cols = [i for i, v in enumerate(levels) if v not in dropped]
        if len(keep) > len(cols) and not allow_skips:
            continue
        sub = kv[:, cols]
        st = None if steps is None or not allow_skips else np.asarray(steps)[np.ix_(keep, keep)]
        if allow_skips:
            chosen = increasing_ids_with_skips(sub, ones, consecutive_bonus, skip_cost, st)
        else:
            chosen = assign_increasing_ids(sub, ones, consecutive_bonus)
        score = _score(sub, chosen, consecutive_bonus, ones, skip_cost, st)
        used = {levels[cols[c]] for c in chosen if c is not None}
        score -= optional_cost * len(used & set(optional))
        if best is None or score > best[0] + 1e-12:
            best = (score, [None if c is None else levels[cols[c]] for c in chosen])
    assert best is not None  # the full vocabulary always fits len(keep) <= len(levels)
    out: list[int | None] = [None] * n
    for k, lab in zip(keep, best[1], strict=True):
        out[int(k)] = lab
    return out


def level_name(label: int) -> str:
    return VERSE_NAMES.get(int(label), str(int(label)))
