"""One fixed, distinct colour per VerSe vertebra id, shared by every output a viewer shows.

Neighbouring levels must be told apart at a glance, and a region (cervical / thoracic / lumbar)
should read as a family: hues run through one band per region and the lightness alternates
from level to level. The table is computed once from that rule, so it is the same in the
``.seg.nrrd``, the markups and the QC picture.
"""

from __future__ import annotations

import colorsys

from ctseg.core.labels import VERSE_NAMES

#: (first hue, last hue) in degrees per region, and the VerSe ids of the region in spine order.
_BANDS: list[tuple[float, float, list[int]]] = [
    (195.0, 255.0, list(range(1, 8))),  # C1-C7: blues
    (50.0, 150.0, list(range(8, 20))),  # T1-T12: yellow -> green
    (0.0, 35.0, [20, 21, 22, 23, 24, 25]),  # L1-L6: red -> orange
]


def _table() -> dict[int, tuple[float, float, float]]:
    out: dict[int, tuple[float, float, float]] = {}
    for h0, h1, ids in _BANDS:
        for n, label in enumerate(ids):
            hue = h0 + (h1 - h0) * n / max(len(ids) - 1, 1)
            value = 0.95 if n % 2 == 0 else 0.7
            rgb = colorsys.hsv_to_rgb(hue / 360.0, 0.75, value)
            out[label] = tuple(round(c, 4) for c in rgb)  # type: ignore[assignment]
    out[26] = (0.8, 0.4, 0.9)  # sacrum: violet
    out[28] = (0.3, 0.85, 0.8)  # T13: teal, between the thoracic greens and lumbar reds
    return out


#: VerSe id -> (r, g, b) in [0, 1].
VERTEBRA_COLORS: dict[int, tuple[float, float, float]] = _table()
assert set(VERTEBRA_COLORS) == set(VERSE_NAMES)

#: Colour of ids VerSe does not name.
FALLBACK_COLOR = (0.6, 0.6, 0.6)


def color_of(label: int) -> tuple[float, float, float]:
    """The fixed colour of a VerSe id (grey for ids outside VerSe)."""
    return VERTEBRA_COLORS.get(int(label), FALLBACK_COLOR)
