"""Quality flags on synthetic box spines: a good spine raises none, each defect its own flag."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ctseg.core.anatomy import natural_body_size, natural_step_mm
from ctseg.formats.qc import QCThresholds, anatomy_flags, confidence, quality_flags

SPACING = (2.0, 2.0, 2.0)
#: L1..L5 as 40 x 30 x 24 mm boxes (28.8 ml), discs 8 mm, L1 on top (superior = +k)
LEVELS = [20, 21, 22, 23, 24]


def spine(levels=LEVELS) -> np.ndarray:
    nz = 4 + len(levels) * 16
    arr = np.zeros((nz, 25, 30), np.uint8)  # [k, j, i]
    for n, label in enumerate(levels):
        top = nz - 4 - n * 16  # L1 highest
        arr[top - 12 : top, 5:20, 5:25] = label
    return arr


def image(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin((-30.0, -25.0, -40.0))
    return img


def names(qc):
    return [f["name"] for f in qc["flags"]]


def test_good_spine_has_no_flags():
    arr = spine()
    qc = quality_flags(image(arr), trained_ids=range(1, 26))
    assert qc["flags"] == [] and qc["trusted"] is True
    assert qc["measures"]["n_levels"] == 5
    assert qc["measures"]["median_centroid_step_mm"] == pytest.approx(32.0)
    assert qc["measures"]["volume_ml"]["L3"] == pytest.approx(28.8)


def test_swapped_pair_is_out_of_order():
    arr = spine()
    l2, l3 = arr == 21, arr == 22
    arr[l2], arr[l3] = 22, 21
    qc = quality_flags(image(arr))
    assert not qc["trusted"]
    (order,) = [f for f in qc["flags"] if f["name"] == "order"]
    assert order["levels"] == ["L2", "L3"] and "L3 lies above L2" in order["reason"]


def test_missing_middle_level_is_non_consecutive():
    arr = spine()
    arr[arr == 22] = 0
    qc = quality_flags(image(arr))
    assert names(qc) == ["non_consecutive"]
    f = qc["flags"][0]
    assert f["levels"] == ["L3"] and "L3 missing between L2 and L4" in f["reason"]


def test_optional_levels_leave_no_gap():
    arr = spine([19, 28, 20, 21])  # T12, T13, L1, L2
    assert "non_consecutive" not in names(quality_flags(image(arr)))
    arr = spine([18, 19, 20, 21])
    assert "non_consecutive" not in names(quality_flags(image(arr)))


def test_a_transitional_naming_is_to_be_checked():
    """An L6 (or T13) in the naming raises ``transitional`` naming it, and only that flag on an
    otherwise plausible spine; the threshold turns it off for a cohort known to carry them."""
    arr = spine([21, 22, 23, 24, 25])  # L2-L5, L6
    qc = quality_flags(image(arr))
    assert names(qc) == ["transitional"] and not qc["trusted"]
    assert qc["flags"][0]["levels"] == ["L6"] and qc["flags"][0]["value"] == 1
    qc = quality_flags(image(spine([19, 28, 20, 21])))  # T12, T13, L1, L2
    assert names(qc) == ["transitional"] and qc["flags"][0]["levels"] == ["T13"]
    off = quality_flags(image(arr), thresholds={"flag_transitional": False})
    assert off["flags"] == [] and off["trusted"]


def test_half_volume_level_is_flagged():
    arr = spine()
    k = np.nonzero(arr == 22)[0]
    arr[k.min() : k.min() + 6][arr[k.min() : k.min() + 6] == 22] = 0  # lower half of L3 gone
    qc = quality_flags(image(arr))
    vol = [f for f in qc["flags"] if f["name"] == "volume"]
    assert [f["levels"] for f in vol] == [["L3"]]
    # half the volume, against the neighbours' (L1, L2, L4, L5) over their natural body sizes
    rel = [1 / natural_body_size(y) for y in (20, 21, 23, 24)]
    assert vol[0]["value"] == pytest.approx(0.5 / natural_body_size(22) / np.median(rel))


def test_implausible_absolute_volume_for_the_region():
    arr = spine()
    img = image(arr)
    img.SetSpacing((0.5, 0.5, 0.5))  # same voxels, 1/64 of the volume: 0.45 ml lumbar levels
    qc = quality_flags(img)
    vol = [f for f in qc["flags"] if f["name"] == "volume"]
    assert {f["levels"][0] for f in vol} == {"L1", "L2", "L3", "L4", "L5"}
    assert "plausible lumbar range" in vol[0]["reason"]


def test_fragmented_level_is_flagged():
    """A piece 8 mm (4 voxels) from its level's largest is a fragment; one across a one-voxel
    gap (a thin pedicle the grid lost) is the same bone (``fragment_join_voxels`` 2.5); with
    the join off, the near piece counts too."""
    arr = spine()
    k = np.nonzero(arr == 22)[0]
    near = arr.copy()
    near[k.min() : k.max() + 1, 21:24, 20:28] = 22  # gap at j = 20: 12 * 3 * 8 = 288 voxels
    assert "fragmented" not in names(quality_flags(image(near)))
    qc = quality_flags(image(near), thresholds={"fragment_join_voxels": 0})
    assert qc["measures"]["fragment_fraction"]["L3"] == pytest.approx(288 / 3888, abs=1e-4)
    arr[k.min() : k.max() + 1, 23:24, 6:24] = 22  # gap j = 20-22: 12 * 1 * 18 = 216 voxels
    qc = quality_flags(image(arr))
    frag = [f for f in qc["flags"] if f["name"] == "fragmented"]
    assert [f["levels"] for f in frag] == [["L3"]]
    assert frag[0]["value"] == pytest.approx(216 / (3600 + 216))
    assert qc["measures"]["fragment_fraction"]["L2"] == 0


def test_centroid_spacing_too_small():
    """One vertebra split into two levels: L3 above, "L4" below, the rest shifted by one."""
    good = spine()
    arr = good.copy()
    arr[good == 24] = 0
    arr[good == 23] = 24
    k3 = np.nonzero(good == 22)[0]
    lower = np.zeros_like(good, bool)
    lower[k3.min() : k3.min() + 6] = True
    arr[(good == 22) & lower] = 23
    qc = quality_flags(image(arr))
    sp = [f for f in qc["flags"] if f["name"] == "centroid_spacing"]
    assert sp and ["L3", "L4"] in [f["levels"] for f in sp]


def test_few_and_unknown_levels():
    arr = spine([20, 21])
    padded = np.zeros((arr.shape[0] + 40, *arr.shape[1:]), arr.dtype)
    padded[:-40] = arr  # 160 mm more of the field of view, no vertebra in it
    (f,) = quality_flags(image(padded))["flags"]
    assert f["name"] == "few_levels" and "at least 3 expected" in f["reason"]
    # a 72 mm field of view holds two levels at most: two found is no flag
    assert quality_flags(image(arr))["measures"]["fov_superior_mm"] == pytest.approx(72.0)
    assert "few_levels" not in names(quality_flags(image(arr)))
    arr = spine([20, 21, 22])
    qc = quality_flags(image(arr), trained_ids=[20, 21])
    (f,) = [f for f in qc["flags"] if f["name"] == "unknown_levels"]
    assert f["levels"] == ["L3"]
    arr[arr == 22] = 40  # not a VerSe id
    qc = quality_flags(image(arr))
    assert "40" in [lv for f in qc["flags"] if f["name"] == "unknown_levels" for lv in f["levels"]]


def test_levels_cut_by_the_field_of_view_are_only_noted():
    arr = spine()[:-4]  # L1's top face now on the image edge ...
    k = np.nonzero(arr == 20)[0]
    arr[k.max() - 5 : k.max() + 1][arr[k.max() - 5 : k.max() + 1] == 20] = 0
    arr = arr[: k.max() - 5]  # ... and half of L1 cut off
    qc = quality_flags(image(arr))
    assert qc["trusted"], qc["flags"]
    assert any("L1" in n for n in qc["notes"])


def test_confidence_and_relabelling():
    arr = spine()
    fg = arr > 0
    # confident softmax: 0.95 on the predicted class
    n_cls = 6
    lut = np.zeros(25, int)
    lut[LEVELS] = np.arange(1, 6)
    p = np.full((n_cls, *arr.shape), 0.01)
    np.put_along_axis(p, lut[arr][None], 0.95, axis=0)
    qc = quality_flags(image(arr), probabilities=p)
    assert "low_confidence" not in names(qc) and qc["measures"]["mean_max_prob"] == pytest.approx(
        0.95 / 1.0, abs=0.01
    )
    flat = np.full((n_cls, *arr.shape), 1.0 / n_cls)
    qc = quality_flags(image(arr), probabilities=flat)
    assert "low_confidence" in names(qc)
    assert confidence(flat, fg)["mean_entropy"] == pytest.approx(1.0)

    raw = arr.copy()
    raw[raw == 21] = 22  # the network called L2 "L3"; relabelling restored order
    qc = quality_flags(image(arr), raw_argmax=raw)
    assert "relabelled" in names(qc) and qc["measures"]["relabelled_fraction"] == pytest.approx(0.2)
    assert "relabelled" not in names(quality_flags(image(arr), raw_argmax=arr))

    # the same evidence as figures from the working grid
    qc = quality_flags(image(arr), confidence_measures={"mean_max_prob": 0.5, "mean_entropy": 0.2})
    assert names(qc) == ["low_confidence"] and qc["measures"]["mean_max_prob"] == 0.5
    qc = quality_flags(image(arr), relabelled_fraction=0.3)
    assert names(qc) == ["relabelled"]
    assert quality_flags(image(arr), relabelled_fraction=0.1)["trusted"]


def test_thresholds_can_be_overridden_and_typos_refused():
    arr = np.zeros((spine([20, 21]).shape[0] + 40, 25, 30), np.uint8)
    arr[:-40] = spine([20, 21])
    assert "few_levels" in names(quality_flags(image(arr)))
    assert "few_levels" not in names(quality_flags(image(arr), thresholds={"min_levels": 2}))
    with pytest.raises(ValueError, match="unknown QC thresholds"):
        QCThresholds.from_dict({"min_level": 2})


@pytest.mark.parametrize("seed", [1, 2])
def test_phantom_truth_is_trusted(seed):
    """An in-distribution phantom's true labelling (T1-L5, 4 mm) raises no flag."""
    from ctseg.phantom import generate

    ph = generate(seed)
    qc = quality_flags(ph.image("labels"), ph.image("hu"), trained_ids=range(1, 26))
    assert qc["trusted"], qc["flags"]
    assert qc["measures"]["n_levels"] == 17


def test_level_off_the_spine_line_is_flagged():
    arr = spine()
    k = np.nonzero(arr == 22)[0]
    arr[arr == 22] = 0
    arr[k.min() : k.max() + 1, 9:24, 9:29] = 22  # L3 moved 8 mm along j and 8 mm along i
    # 0.34 steps: over the default 0.30 (the population's truth reaches 0.25, L4 in lumbar
    # lordosis), not at 0.35
    assert "centroid_offset" not in names(
        quality_flags(image(arr), thresholds={"max_centroid_offset": 0.35})
    )
    qc = quality_flags(image(arr))
    (f,) = [f for f in qc["flags"] if f["name"] == "centroid_offset"]
    moved = np.sqrt(32**2 + 8**2 + 8**2)  # the L2-L3 and L3-L4 steps; the others stay 32 mm
    # the case's size: its steps over the natural ones, the median
    scale = np.median(
        [
            32 / natural_step_mm(20, 21),
            moved / natural_step_mm(21, 22),
            moved / natural_step_mm(22, 23),
            32 / natural_step_mm(23, 24),
        ]
    )
    assert qc["measures"]["size_scale"] == pytest.approx(scale, abs=1e-4)
    assert f["levels"] == ["L3"]
    assert f["value"] == pytest.approx(np.hypot(8, 8) / (scale * natural_step_mm(21, 23) / 2))
    assert "off the line between L2 and L4" in f["reason"]


def column(levels: list[int], scale: float = 0.9, shift: dict | None = None) -> np.ndarray:
    """Boxes 12 mm tall whose centres lie the natural steps apart (x ``scale``), first on top;
    ``shift``: level -> (dj, di) voxels moved off the line."""
    centres = [0.0]
    for a, b in zip(levels, levels[1:], strict=False):
        centres.append(centres[-1] + scale * natural_step_mm(a, b) / SPACING[2])
    nz = int(np.ceil(centres[-1])) + 12
    arr = np.zeros((nz, 25, 40), np.uint8)
    for label, c in zip(levels, centres, strict=True):
        top = nz - 6 - round(c)
        dj, di = (shift or {}).get(label, (0, 0))
        arr[top - 3 : top + 3, 5 + dj : 20 + dj, 10 + di : 30 + di] = label
    return arr


def test_steps_are_judged_against_the_natural_step_of_their_levels():
    """C3-L5 with every step natural: cervical steps about half the lumbar ones, yet no step is
    irregular; a cervical level missed and the chain named on (one step twice as long), is."""
    levels = list(range(3, 25))
    qc = quality_flags(image(column(levels)))
    assert "centroid_spacing" not in names(qc), qc["flags"]
    assert qc["measures"]["size_scale"] == pytest.approx(0.9, abs=0.05)
    probe = quality_flags(
        image(column(levels)), thresholds={"spacing_ratio_low": 1.0, "spacing_ratio_high": 1.0}
    )
    ratios = [f["value"] for f in probe["flags"] if f["name"] == "centroid_spacing"]
    assert 0.85 < min(ratios) and max(ratios) < 1.15  # rounding to 2 mm voxels only
    # C5 missed: the box of C6 named C5 and so on down (the chain one level off below C4)
    arr = column([3, 4, 5, 6, 7, 8, 9, 10, 11], shift=None)
    merged = arr.copy()
    merged[arr == 5] = 0
    for x in range(6, 12):
        merged[arr == x] = x - 1
    qc = quality_flags(image(merged))
    (f,) = [f for f in qc["flags"] if f["name"] == "centroid_spacing"]
    assert f["levels"] == ["C4", "C5"] and f["value"] > 1.6


def test_the_atlas_is_not_held_to_a_body_s_shape():
    """C1 has no body: its lateral masses apart (the arches lost) are not a fragment, and C2
    off the C1-C3 line is not flagged; C4 as far off the C3-C5 line is."""
    levels = [1, 2, 3, 4, 5, 6]
    arr = column(levels, shift={2: (4, 0)})
    qc = quality_flags(image(arr))
    assert "centroid_offset" not in names(qc), qc["flags"]
    arr = column(levels, shift={4: (4, 0)})
    qc = quality_flags(image(arr))
    (f,) = [f for f in qc["flags"] if f["name"] == "centroid_offset"]
    assert f["levels"] == ["C4"]
    ring = column(levels)
    k, j, i = np.nonzero(ring == 1)
    ring[k.min() : k.max() + 1, j.min() : j.max() + 1, 16:24] = 0  # two masses 16 mm apart
    qc = quality_flags(image(ring))
    assert qc["measures"]["fragment_fraction"]["C1"] == pytest.approx(0.5)
    assert "fragmented" not in names(qc)
    c3 = column(levels)
    k, j, i = np.nonzero(c3 == 3)
    c3[k.min() : k.max() + 1, j.min() : j.max() + 1, 16:24] = 0
    assert "fragmented" in names(quality_flags(image(c3)))


def test_anatomy_rows_flag_a_spine_named_one_level_off():
    """L1-L5 named T12-L4: the region network sees the last lumbar (on the sacrum) at the
    level called L4 and a lumbar body at the one called T12; only confident disagreements
    count, and a good spine's rows raise nothing."""
    rows = [
        {"label": 19, "expected": "T12", "seen": "L1-L4", "p_seen": 0.93, "p_expected": 0.02},
        {"label": 20, "expected": "L1-L4", "seen": "L1-L4", "p_seen": 0.97, "p_expected": 0.97},
        {"label": 23, "expected": "L1-L4", "seen": "L5", "p_seen": 0.7, "p_expected": 0.25},
    ]
    qc = quality_flags(image(spine()), anatomy=rows)
    # T12 is an anchor not seen at its level: the naming is also unconfirmed
    assert names(qc) == ["anatomy", "unanchored"] and qc["trusted"] is False
    flag = qc["flags"][0]
    assert flag["levels"] == ["T12"] and flag["value"] == pytest.approx(0.93)
    assert "T12 looks like L1-L4 (p 0.93)" in flag["reason"]
    assert qc["measures"]["anatomy"] == rows
    good = [
        {"label": 20, "expected": "L1-L4", "seen": "L1-L4", "p_seen": 0.9, "p_expected": 0.9},
        {"label": 24, "expected": "L5", "seen": "L5", "p_seen": 0.8, "p_expected": 0.8},
    ]
    assert quality_flags(image(spine()), anatomy=good)["flags"] == []
    strict = quality_flags(image(spine()), anatomy=rows, thresholds={"anatomy_min_seen": 0.6,
                           "anatomy_max_expected": 0.3})  # fmt: skip
    assert strict["flags"][0]["levels"] == ["T12", "L4"]


def row(label, expected, p_expected, seen=None, p_seen=None):
    return {
        "label": label,
        "expected": expected,
        "seen": seen or expected,
        "p_seen": p_expected if p_seen is None else p_seen,
        "p_expected": p_expected,
    }


def test_a_naming_no_anchor_confirms_is_unanchored():
    """T3-T8 (all "T2-T10" to the region network) named right or one level off look the
    same: no anchor in view, so the naming is not trusted. With T11 / T12 in view, the
    naming is confirmed when one of them looks like itself (p >= 0.5) and flagged when none
    does; the flag names the anchor levels and carries the best anchor probability."""
    mid = [row(v, "T2-T10", 0.95) for v in range(10, 16)]
    (flag,) = anatomy_flags(mid)
    assert flag["name"] == "unanchored" and flag["levels"] == [] and flag["value"] == 0.0
    assert "no level in view is one that its anatomy names alone" in flag["reason"]
    lower = [row(v, "T2-T10", 0.9) for v in (15, 16, 17)]
    confirmed = lower + [row(18, "T11", 0.62), row(19, "T12", 0.4, "T11", 0.55)]
    assert anatomy_flags(confirmed) == []
    # the same view named one level down: the vertebra called T12 looks like T11 (p 0.62)
    # and the one called L1 like T12; neither anchor confirmed -> unanchored, not anatomy
    shifted = lower + [row(18, "T11", 0.3, "T2-T10", 0.6), row(19, "T12", 0.2, "T11", 0.62)]
    (flag,) = anatomy_flags(shifted)
    assert flag["name"] == "unanchored" and flag["levels"] == ["T11", "T12"]
    assert flag["value"] == pytest.approx(0.3)
    assert "best: T11 as T11, p 0.30 < 0.5" in flag["reason"]
    assert anatomy_flags(shifted, QCThresholds(anchor_min_p=0.25)) == []
    assert anatomy_flags([]) == []  # no region network: no verdict either way


def test_the_sacrum_is_not_judged_as_a_lumbar_level():
    """L1-L5 and a sacrum twice an L5's volume whose centroid lies 1.75 steps below L5's (as
    in the phantoms' truth, where 10 of 30 draws were flagged for it): no volume and no
    spacing flag; the same box called L6 (a lumbar level) is flagged for both."""
    nz = 4 + 5 * 16 + 40
    arr = np.zeros((nz, 25, 30), np.uint8)
    for n, label in enumerate(LEVELS):
        top = nz - 4 - n * 16
        arr[top - 12 : top, 5:20, 5:25] = label
    arr[4:28, 5:20, 5:25] = 26  # 24 voxels tall, its centre 28 voxels below L5's
    assert names(quality_flags(image(arr))) == []
    arr[arr == 26] = 25
    flagged = set(names(quality_flags(image(arr))))
    assert {"volume", "centroid_spacing"} <= flagged


def test_levels_left_out_at_an_end_of_the_column_are_flagged():
    """A default phantom (T1-L5, nothing of the spine beyond them in view) labelled without
    its first two and its last level: ``unlabelled_end`` names T3 (above it, T2 in view) and
    L4 (below it, L5); the full truth raises nothing (the level past each true end is out of
    view), and the check is not asked above C1 or below the sacrum (skull, pelvis)."""
    from ctseg.formats.qc import unlabelled_ends
    from ctseg.formats.vertebra_stats import vertebra_statistics
    from ctseg.phantom import generate

    ph = generate(1)
    ref, ct = ph.image("labels"), ph.image("hu")
    arr = ph.labels.copy()
    arr[np.isin(arr, [8, 9, 24])] = 0  # T1, T2, L5
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    qc = quality_flags(img, ct)
    (end,) = [f for f in qc["flags"] if f["name"] == "unlabelled_end"]
    assert end["levels"] == ["T3", "L4"] and end["value"] >= 0.05
    assert "above T3" in end["reason"] and "below L4" in end["reason"]
    assert unlabelled_ends(vertebra_statistics(ref, ct)["levels"], ct) == []
    cut = vertebra_statistics(img, ct)["levels"]  # T3 .. L4
    assert [f["levels"] for f in unlabelled_ends(cut, ct)] == [["T3", "L4"]]
    # the same chain as if it began at C1 and ended at the sacrum: nothing is asked
    renamed = [{**cut[0], "label": 1}, *cut[1:-1], {**cut[-1], "label": 26}]
    assert unlabelled_ends(renamed, ct) == []
    assert unlabelled_ends(cut, ct, QCThresholds(end_bone_fraction=1.01)) == []
