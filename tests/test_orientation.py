"""Canonical orientation and resolution handling of inference, on known geometry.

The models here are fixed convolutions (no training): an asymmetric kernel makes the output
depend on how the array is stored, which is exactly what the canonical orientation must remove,
and a threshold "model" on a sphere gives an analytic truth at any resolution.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from ctseg.core.orientation import CANONICAL, from_canonical, orientation_code, to_canonical
from ctseg.inference.predict import predict_volume

CODES = [
    "".join(p)
    for perm in itertools.permutations([("R", "L"), ("A", "P"), ("S", "I")])
    for p in itertools.product(*perm)
]


class AsymmetricThreshold(nn.Module):
    """Foreground where a lopsided local mean of the normalised CT exceeds 0.5."""

    divisor = 1

    def __init__(self, dim: int = 3):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        k = torch.rand((3,) * dim, generator=gen) ** 3
        k /= k.sum()
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        self.conv = conv(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(k[None, None])

    def forward(self, x):
        m = self.conv(x)
        return torch.cat([torch.zeros_like(m), 40.0 * (m - 0.5)], dim=1)


def meta_for(spacing, patch=(16, 16, 16)):
    return {
        "task": "metal",
        "dim": 3,
        "n_classes": 2,
        "class_ids": [0, 1],
        "spacing_mm": list(spacing),
        "patch": list(patch),
        "hu_window": [-1000.0, 1000.0],
        "experiment": {},
    }


def blob_image(seed=1, size=(20, 18, 22), spacing=(2.0, 2.5, 3.0)):
    rng = np.random.default_rng(seed)
    arr = rng.normal(-600, 300, size[::-1]).astype(np.float32)
    for _ in range(6):
        c = rng.uniform(0, 1, 3) * np.array(size[::-1])
        zz, yy, xx = np.indices(size[::-1])
        r2 = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / rng.uniform(4, 20)
        arr += 1500 * np.exp(-r2)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-12.0, 30.5, 100.0))
    return img


def test_there_are_48_distinct_orientation_codes():
    assert len(set(CODES)) == 48 and CANONICAL in CODES


def test_canonical_round_trip_is_exact_for_every_orientation():
    ref = blob_image()
    for code in CODES:
        stored = sitk.DICOMOrient(ref, code)
        assert orientation_code(stored) == code
        canon = to_canonical(stored)
        assert canon.GetSize() == ref.GetSize()
        np.testing.assert_allclose(canon.GetOrigin(), ref.GetOrigin(), atol=1e-9)
        np.testing.assert_array_equal(
            sitk.GetArrayViewFromImage(canon), sitk.GetArrayViewFromImage(ref)
        )
        back = from_canonical(canon, stored)
        assert back.GetSize() == stored.GetSize()
        assert (
            back.GetOrigin() == stored.GetOrigin() and back.GetDirection() == stored.GetDirection()
        )
        np.testing.assert_array_equal(
            sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(stored)
        )


def test_prediction_is_the_same_in_world_space_in_all_48_orientations():
    ct = blob_image()
    model, meta = AsymmetricThreshold(), meta_for((2.0, 2.0, 2.0))
    ref = predict_volume(model, meta, ct, device=torch.device("cpu"))
    ref_arr = sitk.GetArrayFromImage(ref)
    assert 0.02 < ref_arr.mean() < 0.6  # a non-trivial segmentation
    # without the canonical step the asymmetric kernel would see flipped neighbourhoods:
    flipped = sitk.GetArrayFromImage(
        sitk.Resample(
            sitk.GetImageFromArray((sitk.GetArrayFromImage(ct)[::-1, ::-1, ::-1]).copy()),
            ct,
        )
    )
    assert flipped.shape == ref_arr.shape
    for code in CODES:
        stored = sitk.DICOMOrient(ct, code)
        pred = predict_volume(model, meta, stored, device=torch.device("cpu"))
        assert pred.GetSize() == stored.GetSize()
        assert (
            pred.GetDirection() == stored.GetDirection() and pred.GetOrigin() == stored.GetOrigin()
        )
        in_ref = sitk.GetArrayFromImage(to_canonical(pred))  # world space = canonical grid
        inter = np.logical_and(in_ref > 0, ref_arr > 0).sum()
        dice = 2 * inter / ((in_ref > 0).sum() + (ref_arr > 0).sum())
        assert dice >= 0.99, code


def test_orientation_matters_without_the_canonical_step():
    """The check above can fail: the same model on a flipped array gives another answer."""
    ct = blob_image()
    model = AsymmetricThreshold()
    x = torch.from_numpy(np.clip((sitk.GetArrayFromImage(ct) + 1000) / 2000, 0, 1))[None, None]
    a = model(x.float())[0, 1] > 0
    b = torch.flip(model(torch.flip(x.float(), dims=[2, 3, 4]))[0, 1] > 0, dims=[0, 1, 2])
    assert (a != b).sum() > 0


def sphere_ct(spacing, radius=21.0, extent=96.0, supersample=3):
    """A bone sphere with partial-volume HU (voxel fraction inside, supersampled) and its
    truth (voxel centre inside), as a scanner at that resolution would see it."""
    n = int(round(extent / spacing))
    c = np.arange(n) * spacing - extent / 2 + spacing / 2
    offsets = (np.arange(supersample) + 0.5) / supersample * spacing - spacing / 2
    frac = np.zeros((n, n, n), np.float32)
    for a, b, d in itertools.product(offsets, repeat=3):
        r2 = (c[:, None, None] + a) ** 2 + (c[None, :, None] + b) ** 2 + (c[None, None, :] + d) ** 2
        frac += r2 <= radius**2
    frac /= supersample**3
    truth = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2 <= radius**2
    img = sitk.GetImageFromArray((frac * 1600 - 800).astype(np.float32))
    img.SetSpacing([spacing] * 3)
    img.SetOrigin([-extent / 2 + spacing / 2] * 3)
    return img, truth


class Threshold(nn.Module):
    divisor = 1

    def forward(self, x):  # a soft boundary, as trained networks give
        return torch.cat([torch.zeros_like(x), 8.0 * (x - 0.5)], dim=1)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("fine", [2.0, 1.5])
def test_fine_voxels_keep_the_working_grid_dice(fine):
    """Probabilities resampled linearly: a 4 mm model on a fine CT scores at least its 4 mm
    Dice minus 0.03 against the analytic sphere, and beats nearest-neighbour labels."""
    meta = meta_for((4.0, 4.0, 4.0))
    coarse_ct, coarse_truth = sphere_ct(4.0)
    coarse = sitk.GetArrayFromImage(predict_volume(Threshold(), meta, coarse_ct, device="cpu")) > 0
    fine_ct, fine_truth = sphere_ct(fine)
    pred = predict_volume(Threshold(), meta, fine_ct, device=torch.device("cpu"))
    assert pred.GetSize() == fine_ct.GetSize() and pred.GetSpacing() == fine_ct.GetSpacing()
    fine_pred = sitk.GetArrayFromImage(pred) > 0
    d_coarse, d_fine = dice(coarse, coarse_truth), dice(fine_pred, fine_truth)
    assert d_fine >= d_coarse - 0.03
    # nearest-neighbour labels of the 4 mm decision, the method this replaced
    lab4 = sitk.GetImageFromArray(coarse.astype(np.uint8))
    lab4.CopyInformation(coarse_ct)
    nn_labels = sitk.GetArrayFromImage(
        sitk.Resample(lab4, fine_ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )
    assert d_fine > dice(nn_labels > 0, fine_truth)


def test_real_nifti_in_ras_round_trips_to_its_own_grid(real_series_dir, tmp_path):
    from ctseg.ingest.volume import read_image

    ct, _ = read_image(real_series_dir, progress=False)
    ras = sitk.DICOMOrient(ct, "RAS")
    path = tmp_path / "ras.nii.gz"
    sitk.WriteImage(ras, str(path))
    stored = sitk.ReadImage(str(path))
    pred = predict_volume(
        Threshold(), meta_for(stored.GetSpacing(), (64, 64, 16)), stored, device="cpu"
    )
    assert pred.GetSize() == stored.GetSize()
    assert pred.GetOrigin() == stored.GetOrigin()
    assert pred.GetDirection() == stored.GetDirection()
    assert pred.GetSpacing() == stored.GetSpacing()
    # at the CT's own spacing the threshold "model" must give back HU > 0 voxel for voxel,
    # wherever the orientation round trip put them
    tissue = sitk.GetArrayFromImage(stored) > 0
    assert dice(sitk.GetArrayFromImage(pred) > 0, tissue) > 0.99
