"""Metal labelling: exact counts on synthetic bodies, exclusion outside the body, phantom truth."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from ctseg.cli import main
from ctseg.metal import body_mask, label_metal, run_metal, write_summary_table

SPACING = (0.5, 0.75, 2.0)


def _body(shape=(12, 40, 40)) -> np.ndarray:
    """Air, a water cylinder (body) with a lung-like hole, and a table slab below it."""
    z, y, x = shape
    hu = np.full(shape, -1000.0, np.float32)
    yy, xx = np.mgrid[:y, :x]
    disk = (yy - 16) ** 2 + (xx - 20) ** 2 <= 13**2
    hu[:, disk] = 40.0
    lung = (yy - 14) ** 2 + (xx - 14) ** 2 <= 3**2
    hu[:, lung] = -850.0
    hu[:, 34:37, 2:38] = 200.0  # table, separated from the body by air (rows 30-33)
    return hu


def _img(hu: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(SPACING)
    img.SetOrigin((1.0, 2.0, 3.0))
    return img


def test_body_mask_excludes_table_and_fills_lung():
    hu = _body()
    body = body_mask(hu)
    assert body[:, 35, 20].sum() == 0  # table excluded
    assert body[:, 14, 14].all()  # lung hole filled
    assert body[5, 16, 20] and not body[5, 0, 0]


def test_metal_inside_found_exactly_and_outside_excluded():
    hu = _body()
    hu[4:7, 15:17, 18:21] = 7000.0  # 3*2*3 = 18 voxels inside the body
    hu[4:6, 35, 5:8] = 9000.0  # metal in the table: outside the body
    hu[2, 1:3, 1:3] = 8000.0  # bright artefact in the air
    mask, info = label_metal(_img(hu))
    arr = sitk.GetArrayFromImage(mask)
    assert arr.dtype == np.uint8
    assert info["voxels"] == 18 and int(arr.sum()) == 18
    assert info["volume_mm3"] == pytest.approx(18 * 0.5 * 0.75 * 2.0)
    assert info["components"] == 1 and info["component_voxels"] == [18]
    assert info["slices_with_metal"] == [4, 5, 6]
    assert arr[4:7, 15:17, 18:21].all()
    assert mask.GetSpacing() == SPACING and mask.GetOrigin() == (1.0, 2.0, 3.0)


def test_min_size_and_threshold_and_26_connectivity():
    hu = _body()
    hu[3, 10, 10] = 5000.0
    hu[4, 11, 11] = 5000.0  # diagonal neighbour: same component under 26-connectivity
    hu[8:10, 20:22, 20:22] = 3500.0  # 8 voxels
    hu[6, 25, 25] = 2999.0  # just below the threshold
    _, info = label_metal(_img(hu))
    assert info["components"] == 2 and info["component_voxels"] == [8, 2]
    _, info = label_metal(_img(hu), min_size=3)
    assert info["components"] == 1 and info["voxels"] == 8
    _, info = label_metal(_img(hu), threshold_hu=4000)
    assert info["voxels"] == 2 and info["threshold_hu"] == 4000
    _, info = label_metal(_img(hu), threshold_hu=2999)
    assert info["voxels"] == 11


def test_dilation_ball():
    hu = _body()
    hu[6, 16, 20] = 7000.0
    _, info = label_metal(_img(hu), dilation_vox=1)
    assert info["voxels"] == 7  # 6-neighbourhood ball of radius 1
    _, info = label_metal(_img(hu), dilation_vox=2)
    assert info["voxels"] == 33  # lattice points with |d|^2 <= 4


def test_run_metal_files_table_and_cli(tmp_path):
    hu = _body()
    hu[4:7, 15:17, 18:21] = 7000.0
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_img(hu.astype(np.int16)), str(ct))
    out = tmp_path / "metal"
    info = run_metal(
        ct,
        out / "a.nii.gz",
        out / "a.json",
        out / "a_qc.png",
        threshold_hu=3000,
        min_size=1,
        dilation_vox=0,
        slice_png_dir=out / "a_slices",
    )
    assert info["case"] == "a" and info["voxels"] == 18
    assert json.loads((out / "a.json").read_text())["voxels"] == 18
    assert sitk.ReadImage(str(out / "a.nii.gz")).GetPixelID() == sitk.sitkUInt8
    png = Image.open(out / "a_qc.png")
    assert png.size[0] > 500
    slices = sorted((out / "a_slices").iterdir())
    assert len(slices) == hu.shape[0]
    s5 = np.asarray(Image.open(slices[5]))
    assert s5.shape == (40, 40) and set(np.unique(s5)) == {0, 255} and (s5 == 255).sum() == 6
    assert main(["metal", str(ct), "--out", str(out / "b.nii.gz"), "--threshold", "8000"]) == 0
    assert json.loads((out / "b.json").read_text())["voxels"] == 0
    write_summary_table([out / "b.json", out / "a.json"], out / "summary.tsv")
    with open(out / "summary.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["case"] for r in rows] == ["a", "b"]
    assert (
        rows[0]["slices_with_metal"] == "4 5 6"
        and rows[0]["voxels"] == "18"
        and rows[1]["n_slices_with_metal"] == "0"
    )


def test_phantom_metal_truth():
    import ctseg.phantom as phantom

    ph = phantom.generate(
        5,
        {
            "shape": [48, 40, 56],
            "spacing_mm": [6.0, 6.0, 6.0],
            "noise_hu": 0.0,
            "blur_mm": 0.0,
            "implants": ["L3", "L4"],
        },
        progress=False,
    )
    assert ph.metal.sum() > 0
    mask, info = label_metal(ph.image("hu"))
    assert np.array_equal(sitk.GetArrayFromImage(mask), ph.metal)
    assert info["voxels"] == int(ph.metal.sum())


def test_fill_metal_replaces_only_metal_and_keeps_the_grid():
    """Voxels at or above 3000 HU take the fill value, every other voxel and the geometry stay;
    a CT without metal comes back as the same image."""
    from ctseg.metal import METAL_HU, fill_metal

    hu = np.full((4, 5, 6), 40, np.int16)
    hu[1, 2, 3], hu[2, 2, 2], hu[3, 0, 0] = 3000, 7000, 2999
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((0.7, 0.8, 2.5))
    ct.SetOrigin((-10.0, 5.0, 300.0))
    ct.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    out = fill_metal(ct, 250.0)
    got = sitk.GetArrayFromImage(out)
    assert METAL_HU == 3000.0 and out.GetPixelID() == ct.GetPixelID()
    assert got[1, 2, 3] == 250 and got[2, 2, 2] == 250 and got[3, 0, 0] == 2999
    changed = got != hu
    assert changed.sum() == 2
    assert out.GetSpacing() == ct.GetSpacing() and out.GetOrigin() == ct.GetOrigin()
    assert out.GetDirection() == ct.GetDirection()
    assert sitk.GetArrayFromImage(ct)[2, 2, 2] == 7000  # the input is not modified
    hu[hu >= 3000] = 100
    clean = sitk.GetImageFromArray(hu)
    assert fill_metal(clean, 250.0) is clean
    assert fill_metal(ct, None) is ct  # no fill configured: the CT as it is
