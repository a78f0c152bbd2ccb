"""Vertebra label ids (VerSe convention) and the label maps that bring other conventions in.

VerSe ids: 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 26 sacrum, 28 T13. Everything inside
ctseg speaks VerSe; other conventions (TotalSegmentator, ...) enter only through a label map.
"""

from __future__ import annotations

import numpy as np

VERSE_NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{7 + i: f"T{i}" for i in range(1, 13)},
    **{19 + i: f"L{i}" for i in range(1, 6)},
    25: "L6",
    26: "sacrum",
    28: "T13",
}
VERSE_IDS: dict[str, int] = {name: label for label, name in VERSE_NAMES.items()}
SACRUM: int = VERSE_IDS["sacrum"]

#: VerSe ids in anatomical order, head to feet (T13 between T12 and L1, L6 after L5).
SPINE_ORDER: tuple[int, ...] = (*range(1, 20), 28, *range(20, 25), 25, 26)
_RANK = {label: n for n, label in enumerate(SPINE_ORDER)}


def spine_rank(label: int) -> int:
    """Position of a VerSe id along the spine, cranial first (unknown ids sort last)."""
    return _RANK.get(int(label), 1000 + int(label))


def spinal_region(label: int) -> str | None:
    """``"cervical"``, ``"thoracic"`` (T13 included) or ``"lumbar"`` (L6 included) for a VerSe
    id; None for the sacrum and ids VerSe does not name."""
    label = int(label)
    if 1 <= label <= 7:
        return "cervical"
    if 8 <= label <= 19 or label == 28:
        return "thoracic"
    if 20 <= label <= 25:
        return "lumbar"
    return None


def label_name(label: int) -> str:
    """VerSe name of a label id, or the id as text for ids VerSe does not name."""
    return VERSE_NAMES.get(int(label), str(int(label)))


#: TotalSegmentator v2 ("total" task) vertebra ids -> VerSe ids. v2 counts from S1 = 26 upward
#: to C1 = 50 (L5 = 27 ... T12 = 32, T11 = 33 ... T1 = 43, C7 = 44 ... C1 = 50); sacrum = 25.
TOTALSEG_V2_TO_VERSE: dict[int, int] = {
    25: 26,  # sacrum
    **{27 + k: 24 - k for k in range(5)},  # L5..L1 -> 24..20
    **{32 + k: 19 - k for k in range(12)},  # T12..T1 -> 19..8
    **{44 + k: 7 - k for k in range(7)},  # C7..C1 -> 7..1
}

#: TotalSegmentator v3 ("total" task): v2 with id 26 relabelled from S1 to L6 (the corrected
#: vertebra labelling of v3); every other vertebra id is unchanged. v2's S1 (26) has no VerSe
#: id (VerSe labels the sacrum as a whole), so v2 drops it while v3 maps 26 to VerSe L6 (25).
TOTALSEG_V3_TO_VERSE: dict[int, int] = {**TOTALSEG_V2_TO_VERSE, 26: 25}

BUILTIN_LABEL_MAPS: dict[str, dict[int, int]] = {
    "totalseg_v2": TOTALSEG_V2_TO_VERSE,
    "totalseg_v3": TOTALSEG_V3_TO_VERSE,
}


def level_range(first: str, last: str) -> list[int]:
    """VerSe ids from ``first`` to ``last`` inclusive along the spine (C1 -> sacrum)."""
    order = list(range(1, 25))
    a, b = VERSE_IDS[first], VERSE_IDS[last]
    if a not in order or b not in order or order.index(a) > order.index(b):
        raise ValueError(f"invalid level range {first}-{last}")
    return order[order.index(a) : order.index(b) + 1]


def resolve_label_map(name: str | None, extra: dict | None = None) -> dict[int, int] | None:
    """Look a label map up by name among config-provided and built-in maps."""
    if not name:
        return None
    maps = {
        **BUILTIN_LABEL_MAPS,
        **{k: {int(a): int(b) for a, b in v.items()} for k, v in (extra or {}).items()},
    }
    if name not in maps:
        raise KeyError(f"unknown label_map {name!r}; known: {', '.join(sorted(maps))}")
    return maps[name]


#: Largest id for which :func:`apply_label_map` builds a lookup table indexed by id.
_LUT_MAX = 65535


def apply_label_map(arr: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Apply ``{source_id: verse_id}``; ids the map does not name become background (0).

    Label maps bring other conventions (e.g. TotalSegmentator, which also labels organs) into
    VerSe ids, so anything the map does not name is not a vertebra and is dropped.
    """
    arr = np.asarray(arr)
    top = max(int(arr.max()) if arr.size else 0, max(mapping, default=0))
    if top > _LUT_MAX:
        # a stray huge id (e.g. 2e9) must not size a lookup table: map the named ids one by one
        out = np.zeros(arr.shape, np.uint16)
        for src, dst in mapping.items():
            if src >= 0 and dst:
                out[arr == src] = int(dst)
        return out.astype(np.uint8) if out.size == 0 or out.max() < 256 else out
    lut = np.zeros(top + 1, dtype=np.uint16)
    for src, dst in mapping.items():
        if src >= 0:
            lut[int(src)] = int(dst)
    out = lut[arr]
    return out.astype(np.uint8) if out.size == 0 or out.max() < 256 else out
