"""Centroid-only vertebra localisation and identification (issue 14, seed 004).

Trained from a CT and a centroid list per case, no label maps: Gaussian heatmap regression
per level with a 3D U-Net (:mod:`.training`), decoding to at most one point per level made
consistent along the spine (:mod:`.heatmaps`, :mod:`.decode`), VerSe / Glocker scoring
(:mod:`.identify`).
"""

from ctseg.localisation.identify import (
    format_table,
    identification_scores,
    identification_table,
)
from ctseg.localisation.predict import load_localiser, predict_centroids
from ctseg.localisation.training import train_localiser

__all__ = [
    "format_table",
    "identification_scores",
    "identification_table",
    "load_localiser",
    "predict_centroids",
    "train_localiser",
]
