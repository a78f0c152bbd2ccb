"""Synthetic training cases for the localiser: fresh draws of the phantom population.

Why: naming a vertebra from a partial field of view is learnt from the anatomy that counts
(C2, the last rib, the sacrum) seen in many fields of view, orientations and body sizes. The
default cohort trains on 20 cases; measured on them the trained localiser names 89 % of the
levels of its own training cases but 66 % of unseen draws of the same population -- it
memorises cases. Phantom draws cost about 0.2 s each at the population's CPU budget, so the
localiser can see hundreds of them in the time one epoch takes, with their centroids only
(no label map is read: the centroid-only contract holds).

The draws use seeds from their own stream (``SYNTHETIC_SEED_BASE`` upwards, mixed with the
run's seed), which no case sheet of this repository uses, so a held-out figure stays held out.
``synthetic`` (localiser config) is ``false`` or a mapping:

* ``cases``: how many draws (0: none);
* ``population``: the phantom population's ranges (``config.yaml``'s ``phantom.population``;
  the workflow's config passes the same mapping by YAML anchor);
* ``max_voxels``: the CPU budget of one draw (coarser voxels where a draw would exceed it;
  the localiser's 8 mm working grid does not need finer);
* ``refiner_cases``: how many of the draws the second stage also trains on (its 3 mm crops
  hold about 15 MB each, so fewer than the first stage);
* ``regions_cases``: how many draws the region network (the anatomical anchors) trains on
  besides the case sheet's -- the first ``regions_cases`` seeds of the same stream, so they
  may be more than ``cases``. Why apart from the first stage: 300 draws spread over the first
  stage's steps made it underfit (README), while the region network classifies local cubes
  and gains from seeing more bodies and more transitional anatomy (a 20-case cohort holds one
  T13 and no L6).

The first stage trains on ``cases`` draws only when ``cases`` > 0; a block whose three counts
are 0 is no block.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ctseg.core.errors import ConfigError

#: First seed of the synthetic stream (case sheets here use seeds below 10,000).
SYNTHETIC_SEED_BASE = 50_000_000

SYNTHETIC_DEFAULTS: dict = {
    "cases": 0,
    "population": None,
    "max_voxels": 1_500_000,
    "refiner_cases": 0,
    "regions_cases": 0,
}


def resolve_synthetic(config) -> dict | None:
    """``None`` (no synthetic draws) or the block with defaults filled in; bad keys and values
    raise :class:`ConfigError` naming the key."""
    counts = ("cases", "refiner_cases", "regions_cases")
    if config in (None, False) or (
        isinstance(config, dict) and not any(config.get(k) for k in counts)
    ):
        return None
    if not isinstance(config, dict):
        raise ConfigError(f"config key 'synthetic' must be false or a mapping, got {config!r}")
    unknown = sorted(set(config) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown key(s) in 'synthetic': {', '.join(unknown)}")
    out = {**SYNTHETIC_DEFAULTS, **config}
    for key in ("max_voxels", *counts):
        if int(out[key]) < 0:
            raise ConfigError(f"config key 'synthetic.{key}' must be >= 0, got {out[key]}")
        out[key] = int(out[key])
    if out["refiner_cases"] > out["cases"]:
        raise ConfigError("config key 'synthetic.refiner_cases' must be <= 'synthetic.cases'")
    if not isinstance(out["population"], dict):
        raise ConfigError(
            "config key 'synthetic.population' must be the phantom population's ranges "
            "(phantom.population of config.yaml)"
        )
    from ctseg.phantom.population import PopulationParams

    PopulationParams.from_dict(out["population"])  # empty / inverted ranges fail here
    return out


def synthetic_seeds(seed: int, n: int) -> list[int]:
    """``n`` distinct seeds of the synthetic stream for a run seeded ``seed``."""
    state = np.random.SeedSequence([int(seed), 7]).generate_state(1)[0] % 1_000_000
    return [SYNTHETIC_SEED_BASE + int(state) * 1000 + i for i in range(n)]


def synthetic_items(cfg: dict, seed: int, n: int) -> Iterator[dict]:
    """The first ``n`` draws of the population as localiser items ``{"case", "ct"
    (sitk.Image), "centroids"}``, generated one at a time (a draw is deterministic in its
    seed, so a resumed run and the later stages see the same cases)."""
    from ctseg import phantom
    from ctseg.phantom.population import case_params

    population = {**cfg["population"], "max_voxels": cfg["max_voxels"]}
    for s in synthetic_seeds(seed, n):
        name = f"synthetic{s}"
        ph = phantom.generate(s, case_params({"population": population}, name, s), progress=False)
        yield {"case": name, "ct": ph.image("hu"), "centroids": ph.centroids}


__all__ = ["SYNTHETIC_DEFAULTS", "resolve_synthetic", "synthetic_items", "synthetic_seeds"]
