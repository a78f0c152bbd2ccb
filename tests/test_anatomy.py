"""Natural vertebral steps (``ctseg.core.anatomy``): hand-summed from the size tables, and the
phantom's own layout built from them."""

from __future__ import annotations

import numpy as np
import pytest

from ctseg.core.anatomy import dim, natural_body_size, natural_step_mm
from ctseg.core.spine_size import size_scale
from ctseg.phantom import PhantomParams
from ctseg.phantom.layout import make_layout


def test_natural_steps_sum_the_bodies_and_discs_between():
    # L1 (H 25, disc 8) to L2 (H 25.5, interpolated between L1 25 and L5 27)
    assert natural_step_mm(20, 21) == pytest.approx(12.5 + 8 + 12.75)
    assert natural_step_mm(21, 20) == natural_step_mm(20, 21)
    # across a missing level: the whole body and both discs between
    assert natural_step_mm(20, 22) == pytest.approx(
        natural_step_mm(20, 21) + natural_step_mm(21, 22)
    )
    # C3 (H 13) to C4 (13.25), disc below C3 4 + 2/6
    assert natural_step_mm(3, 4) == pytest.approx(6.5 + (4 + 2 / 6) + 13.25 / 2)
    # cervical steps about half the lumbar ones: why QC reads them from this table
    assert natural_step_mm(23, 24) / natural_step_mm(3, 4) > 2.0


def test_transitional_levels_count_only_where_named():
    # T12 -> L1 skips a T13 the spine does not have; T12 -> T13 -> L1 sums through it
    assert natural_step_mm(19, 20) == pytest.approx(11.5 + 6 + 12.5)
    t13 = natural_step_mm(19, 28)
    assert t13 == pytest.approx(11.5 + 6 + dim("H", 28) / 2)
    assert dim("H", 28) == pytest.approx(24.0)  # between T12 (23) and L1 (25)
    assert natural_step_mm(28, 20) == pytest.approx(12 + dim("disc", 28) + 12.5)
    # L5 -> L6: L6 borrows L5's sizes
    assert natural_step_mm(24, 25) == pytest.approx(13.5 + 10 + 13.5)
    with pytest.raises(ValueError, match="sacrum"):
        natural_step_mm(24, 26)


def straight_layout(body_scale: float):
    """The layout of a phantom with no curve at ``body_scale``."""
    p = PhantomParams(
        fit=False,
        body_scale=body_scale,
        kyphosis_mm=0.0,
        lordosis_mm=0.0,
        scoliosis_mm=0.0,
        cervical_lordosis_mm=0.0,
    )
    return make_layout(p, np.full(7, 0.5))


def test_the_phantom_places_its_levels_at_the_natural_steps():
    """A straight phantom at body_scale 1: each level's centre lies the natural step below
    the one above (the layout's z_c, before any curve)."""
    lay = straight_layout(1.0)
    seq = [k for k in lay.seq if k in lay.z_c and k != 26]
    for a, b in zip(seq, seq[1:], strict=False):
        assert abs(lay.z_c[a] - lay.z_c[b]) == pytest.approx(
            natural_step_mm(a, b) * lay.s_z, rel=1e-6
        )


def test_natural_body_sizes_are_relative_box_volumes():
    assert natural_body_size(24) == pytest.approx(27 * 50 * 35)
    # L5 is naturally larger than L3 and L4, T12 smaller than L1 and L2
    assert natural_body_size(24) / np.median([natural_body_size(22), natural_body_size(23)]) == (
        pytest.approx(1.142, abs=1e-3)
    )
    assert natural_body_size(19) / np.median([natural_body_size(20), natural_body_size(21)]) == (
        pytest.approx(0.780, abs=1e-3)
    )
    for ring_or_sacrum in (1, 26):
        with pytest.raises(ValueError, match="no vertebral body"):
            natural_body_size(ring_or_sacrum)


def test_size_scale_reads_a_spine_s_size_from_its_labelled_points():
    """Points placed at 0.8 x the natural steps from T11 to L3 (one level, L1, missing; the
    sacrum's point, 90 mm below, and the order given ignored) measure 0.8; a phantom's own
    centroids measure its layout's scale; fewer than two levels measure nothing."""
    labels = [18, 19, 21, 22, 23]
    z = np.concatenate(
        [
            [0.0],
            -np.cumsum(
                [0.8 * natural_step_mm(a, b) for a, b in zip(labels, labels[1:], strict=False)]
            ),
        ]
    )
    pts = [
        {"label": lab, "world": [1.0, 2.0, float(zz)]} for lab, zz in zip(labels, z, strict=True)
    ]
    pts.append({"label": 26, "x": 0.0, "y": 0.0, "z": float(z[-1]) - 90.0})
    assert size_scale(pts[::-1]) == pytest.approx(0.8)
    assert size_scale(pts[:1] + pts[-1:]) is None
    lay = straight_layout(0.8)
    pts = [{"label": k, "world": [0.0, 0.0, lay.z_c[k]]} for k in lay.z_c if k != 26]
    assert size_scale(pts) == pytest.approx(lay.s_z, rel=1e-6)
