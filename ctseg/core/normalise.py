"""CT intensity normalisation shared by cubes, training, validation and inference.

A fixed HU window (not per-volume z-scoring) keeps intensities comparable across scanners and
phantoms, and makes constant padding with 0 equal to air; one function, so the network sees at
inference exactly what it saw in training.
"""

from __future__ import annotations

import numpy as np

DEFAULT_HU_WINDOW: tuple[float, float] = (-1000.0, 2000.0)


#: seed 002's metal threshold: no bone reaches it (cortex 1,100-1,900 HU), implant steel and
#: titanium exceed it (ctseg.metal's labelling and fill)
METAL_HU = 3000.0


def hu_to_float(
    hu: np.ndarray, window: tuple[float, float] | list[float] = DEFAULT_HU_WINDOW
) -> np.ndarray:
    """Clip HU to ``window`` and scale linearly to [0, 1] float32 (air -> 0)."""
    lo, hi = float(window[0]), float(window[1])
    out = (np.clip(hu.astype(np.float32), lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32, copy=False)
