"""DRR rendering end to end: read a CT, ray-cast, write line integrals, labels and a PNG.

Outputs (the workflow's ``drr`` rule):

* ``{view}.nii.gz``: float32 line integrals of linear attenuation (dimensionless), written as a
  **2D** NIfTI through SimpleITK from the ``[row, col]`` array, so x = column, y = row, with the
  pixel spacing ``(sp_col, sp_row)`` (origin 0, identity direction: the detector has no place in
  patient space that a 2D NIfTI could express).
* ``{view}_label.nii.gz``: uint8 VerSe ids, longest path per pixel (``ctseg.drr.labels``).
* ``{view}.png``: side by side, the display image (line integral windowed, bone bright, row 0
  superior at the top) and the same with the projected labels' outlines in colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctseg.core.atomic import atomic_path
from ctseg.core.errors import InputError
from ctseg.core.grid import same_grid
from ctseg.core.imageio import read_image_file
from ctseg.drr.attenuation import hu_to_mu
from ctseg.drr.geometry import View, VolumeGeometry
from ctseg.drr.labels import ProjectedLabels, projected_from_paths, summed_mask
from ctseg.drr.raycast import raycast

#: metal flag added to label ids when labels and metal are ray-cast in one pass
METAL_BIT = 1 << 16


def read_volume(path: str | Path, case: str | None = None) -> sitk.Image:
    """Read a CT (DICOM folder, NIfTI, NRRD) through ``ctseg.ingest.volume.read_image`` (checked HU)."""
    from ctseg.ingest.volume import read_image

    return read_image(Path(path), case=case, progress=False)[0]


def display_image(
    line_integral: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.5
) -> np.ndarray:
    """8-bit display: ``-log(I/I0)`` (= the line integral) windowed by percentiles, bone bright."""
    li = np.asarray(line_integral, dtype=np.float64)
    inside = li[li > 1e-6]
    if inside.size == 0:
        return np.zeros(li.shape, np.uint8)
    lo, hi = np.percentile(inside, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1e-6
    return (np.clip((li - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def _outlines(labels: np.ndarray) -> np.ndarray:
    """Boolean map of pixels whose 4-neighbourhood holds a different label (label > 0)."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    return edge & (lab > 0)


def overlay_png(
    display: np.ndarray, labels: np.ndarray, out_png: Path, metal: np.ndarray | None = None
) -> None:
    """Write the display image and, beside it, the same with coloured label outlines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colormaps
    from PIL import Image

    gray = np.repeat(display[..., None], 3, axis=2)
    over = gray.copy()
    cmap = colormaps["tab20"]
    edge = _outlines(labels)
    colors = (np.array([cmap(int(v) % 20)[:3] for v in range(256)]) * 255).astype(np.uint8)
    over[edge] = colors[np.asarray(labels)[edge].astype(np.int64) % 256]
    if metal is not None:
        over[_outlines(metal)] = (255, 0, 0)
    sep = np.full((display.shape[0], 2, 3), 128, np.uint8)
    with atomic_path(out_png) as tmp:
        Image.fromarray(np.concatenate([gray, sep, over], axis=1)).save(tmp, format="PNG")


def write_image2d(array: np.ndarray, spacing: tuple[float, float], out: Path) -> None:
    """Write a ``[row, col]`` array as a 2D NIfTI (x = column, y = row) atomically."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(tuple(float(s) for s in spacing))
    with atomic_path(out) as tmp:
        sitk.WriteImage(img, str(tmp))


def render_view(
    ct: sitk.Image,
    view: dict | View,
    *,
    labels: sitk.Image | None = None,
    metal: sitk.Image | None = None,
    energy_kev: float = 70.0,
    ct_kev: float = 70.0,
    min_path_mm: float = 2.0,
    device: str = "auto",
    **raycast_kwargs,
) -> tuple[np.ndarray, ProjectedLabels | None, np.ndarray | None]:
    """Line integral ``(rows, cols)`` at ``energy_kev``, projected labels and projected metal."""
    return render_views(
        ct,
        [view],
        labels=labels,
        metal=metal,
        energy_kev=energy_kev,
        ct_kev=ct_kev,
        min_path_mm=min_path_mm,
        device=device,
        **raycast_kwargs,
    )[0]


def render_views(
    ct: sitk.Image,
    views: list[dict | View],
    *,
    labels: sitk.Image | None = None,
    metal: sitk.Image | None = None,
    energy_kev: float = 70.0,
    ct_kev: float = 70.0,
    min_path_mm: float = 2.0,
    device: str = "auto",
    **raycast_kwargs,
) -> list[tuple[np.ndarray, ProjectedLabels | None, np.ndarray | None]]:
    """:func:`render_view` for several views of one CT.

    The attenuation volume and the combined label / metal ids depend on the CT alone, so they
    are built once and every view only ray-casts them.
    """
    parsed = [View.from_dict(v) for v in views]  # every view checked before any work
    geom = VolumeGeometry.from_image(ct)
    hu = sitk.GetArrayViewFromImage(ct)
    metal_arr = None if metal is None else sitk.GetArrayFromImage(metal)
    mu_vol = hu_to_mu(hu, energy_kev, metal=metal_arr, ct_kev=ct_kev)
    lab_arr = None if labels is None else sitk.GetArrayFromImage(labels).astype(np.int64)
    # One pass for labels and metal: ray-cast the combined id ``label + METAL_BIT * metal`` and
    # split the per-combination path lengths afterwards.
    combo = None
    if (
        lab_arr is not None
        and metal_arr is not None
        and lab_arr.size
        and lab_arr.max() >= METAL_BIT
    ):
        raise InputError(f"label ids must be below {METAL_BIT} to be projected with a metal mask")
    if lab_arr is not None or metal_arr is not None:
        combo = np.zeros(hu.shape, np.int64) if lab_arr is None else lab_arr.copy()
        if metal_arr is not None:
            combo += METAL_BIT * (metal_arr > 0)
    return [
        _split_paths(
            raycast(mu_vol, geom, v, labels=combo, device=device, **raycast_kwargs),
            v,
            with_labels=lab_arr is not None,
            with_metal=metal_arr is not None,
            min_path_mm=min_path_mm,
        )
        for v in parsed
    ]


def _split_paths(
    res, v: View, *, with_labels: bool, with_metal: bool, min_path_mm: float
) -> tuple[np.ndarray, ProjectedLabels | None, np.ndarray | None]:
    """Separate one ray-cast's combined-id path lengths into projected labels and metal."""
    proj = metal2d = None
    if res.label_paths is not None:
        vals = res.label_values
        if with_labels:
            lab_vals = np.unique(vals % METAL_BIT)
            lab_vals = lab_vals[lab_vals > 0]
            lab_paths = (
                np.stack([res.label_paths[vals % METAL_BIT == lv].sum(axis=0) for lv in lab_vals])
                if lab_vals.size
                else np.zeros((0, v.rows, v.cols), np.float32)
            )
            proj = projected_from_paths(lab_paths, lab_vals, min_path_mm)
        if with_metal:
            metal2d = summed_mask(
                res.label_paths, vals, min_path_mm, include=set(vals[vals >= METAL_BIT].tolist())
            )
    return res.line_integrals[0], proj, metal2d


def _read_on_grid(path: Path | None, ct: sitk.Image, what: str, case: str | None):
    """The image at ``path`` (None: none), which must lie on exactly the CT's grid."""
    if path is None:
        return None
    img = read_image_file(path, case)
    on_grid, why = same_grid(ct, img)
    if not on_grid:
        raise InputError(f"{what} is not on the CT grid ({why})", path=path, case=case)
    return img


@dataclass(frozen=True)
class DrrOutputs:
    """Where one view's files go: line integrals, projected labels, display PNG (optional)."""

    nii: Path
    label_nii: Path | None = None
    png: Path | None = None


def run_drr(
    ct_path: Path,
    labels_path: Path | None,
    metal_path: Path | None,
    view: dict,
    out_nii: Path,
    out_label_nii: Path | None,
    out_png: Path | None,
    *,
    energy_kev: float = 70.0,
    min_path_mm: float = 2.0,
    device: str = "auto",
    ct_kev: float = 70.0,
    case: str | None = None,
) -> None:
    """Render one view of a case: line integrals, projected VerSe labels and a display PNG."""
    run_drr_views(
        ct_path,
        labels_path,
        metal_path,
        [view],
        [DrrOutputs(Path(out_nii), out_label_nii, out_png)],
        energy_kev=energy_kev,
        min_path_mm=min_path_mm,
        device=device,
        ct_kev=ct_kev,
        case=case,
    )


def run_drr_views(
    ct_path: Path,
    labels_path: Path | None,
    metal_path: Path | None,
    views: list[dict],
    outputs: list[DrrOutputs],
    *,
    energy_kev: float = 70.0,
    min_path_mm: float = 2.0,
    device: str = "auto",
    ct_kev: float = 70.0,
    case: str | None = None,
) -> None:
    """Render every view of a case from one read of its CT, labels and metal mask.

    Labels and metal mask must lie on exactly the CT grid (the workflow guarantees it); a
    mismatch raises InputError naming the file rather than silently resampling. Every view is
    rendered and checked before the first file is written, so a bad view leaves no other
    view's files behind to look like a complete job.
    """
    if len(views) != len(outputs):
        raise ValueError(f"{len(views)} views but {len(outputs)} output sets")
    ct_path = Path(ct_path)
    ct = read_volume(ct_path, case)
    if ct.GetDimension() != 3:
        raise InputError(f"expected a 3D CT, got {ct.GetDimension()}D", path=ct_path, case=case)
    labels = _read_on_grid(labels_path, ct, "label map", case)
    metal = _read_on_grid(metal_path, ct, "metal mask", case)
    parsed = [View.from_dict(v) for v in views]
    try:
        rendered = render_views(
            ct,
            parsed,
            labels=labels,
            metal=metal,
            energy_kev=energy_kev,
            ct_kev=ct_kev,
            min_path_mm=min_path_mm,
            device=device,
        )
    except InputError as exc:
        raise InputError(exc.reason, path=ct_path, case=case) from exc
    files = []
    for v, out, (li, proj, metal2d) in zip(parsed, outputs, rendered, strict=True):
        lab2d = proj.multiclass if proj is not None else np.zeros(li.shape, np.uint8)
        if out.label_nii is not None and lab2d.dtype != np.uint8:
            raise InputError(
                "label ids above 255 cannot be written as uint8", path=labels_path, case=case
            )
        files.append((v, out, li, lab2d, metal2d))
    # Everything is computed and checked before the first file is written.
    for v, out, li, lab2d, metal2d in files:
        write_image2d(li.astype(np.float32), v.spacing_mm, Path(out.nii))
        if out.label_nii is not None:
            write_image2d(lab2d, v.spacing_mm, Path(out.label_nii))
        if out.png is not None:
            overlay_png(display_image(li), lab2d, Path(out.png), metal2d)


def stack_views(paths: list[Path], out: Path) -> None:
    """Stack 2D DRR NIfTIs (or 3D with one slice) into one 3D NIfTI: z = view index.

    Spacing is ``[sp_col, sp_row, 1]``; all views must share size and pixel type.
    """
    if not paths:
        raise InputError("no views to stack", path=out)
    arrays = []
    spacing = None
    for p in paths:
        img = sitk.ReadImage(str(p))
        arr = sitk.GetArrayFromImage(img)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise InputError(f"expected a 2D view, got shape {arr.shape}", path=p)
        if arrays and (arr.shape != arrays[0].shape or arr.dtype != arrays[0].dtype):
            raise InputError(
                f"view {arr.shape} {arr.dtype} differs from the first {arrays[0].shape} {arrays[0].dtype}",
                path=p,
            )
        if spacing is None:
            spacing = img.GetSpacing()[:2]
        arrays.append(arr)
    stacked = sitk.GetImageFromArray(np.stack(arrays))
    assert spacing is not None
    stacked.SetSpacing((float(spacing[0]), float(spacing[1]), 1.0))
    with atomic_path(out) as tmp:
        sitk.WriteImage(stacked, str(tmp))
