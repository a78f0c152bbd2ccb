"""VerSe ids and the label maps that bring other conventions into them."""

import numpy as np
import pytest

from ctseg.core.labels import (
    TOTALSEG_V2_TO_VERSE,
    VERSE_IDS,
    VERSE_NAMES,
    apply_label_map,
    level_range,
    resolve_label_map,
    spinal_region,
)


def test_verse_ids_follow_the_convention():
    assert VERSE_IDS["C1"] == 1 and VERSE_IDS["C7"] == 7
    assert VERSE_IDS["T1"] == 8 and VERSE_IDS["T12"] == 19
    assert VERSE_IDS["L1"] == 20 and VERSE_IDS["L5"] == 24
    assert VERSE_NAMES[25] == "L6" and VERSE_NAMES[26] == "sacrum" and VERSE_NAMES[28] == "T13"
    assert level_range("T11", "L2") == [18, 19, 20, 21]
    with pytest.raises(ValueError):
        level_range("L2", "T11")


def test_totalsegmentator_v2_map():
    # the shared real label map: 32 = T12, 33 = T11 (DESIGN.md)
    assert TOTALSEG_V2_TO_VERSE[32] == 19 and TOTALSEG_V2_TO_VERSE[33] == 18
    assert TOTALSEG_V2_TO_VERSE[27] == 24  # L5
    assert TOTALSEG_V2_TO_VERSE[43] == 8  # T1
    assert TOTALSEG_V2_TO_VERSE[50] == 1  # C1
    assert TOTALSEG_V2_TO_VERSE[25] == 26  # sacrum
    assert sorted(TOTALSEG_V2_TO_VERSE.values()) == sorted({*range(1, 25), 26})


def test_apply_label_map_drops_what_it_does_not_name():
    arr = np.array([[0, 32, 33, 5, 90]], dtype=np.uint8)
    out = apply_label_map(arr, TOTALSEG_V2_TO_VERSE)
    assert out.dtype == np.uint8 and out.tolist() == [[0, 19, 18, 0, 0]]


def test_resolve_label_map_by_name():
    assert resolve_label_map(None) is None
    assert resolve_label_map("totalseg_v2") is TOTALSEG_V2_TO_VERSE
    assert resolve_label_map("mine", {"mine": {"3": 20}}) == {3: 20}
    with pytest.raises(KeyError, match="unknown label_map 'nope'"):
        resolve_label_map("nope")


def test_spinal_region_of_every_verse_level():
    assert [spinal_region(VERSE_IDS[f"C{i}"]) for i in range(1, 8)] == ["cervical"] * 7
    assert {spinal_region(VERSE_IDS[f"T{i}"]) for i in range(1, 14)} == {"thoracic"}  # T13 too
    assert {spinal_region(VERSE_IDS[f"L{i}"]) for i in range(1, 7)} == {"lumbar"}  # L6 too
    assert spinal_region(VERSE_IDS["sacrum"]) is None and spinal_region(99) is None
