"""The run report's plots: Dice per label, centroid error per vertebra, contour overlays.

Each reads this run's tables or images and writes one PNG atomically; matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from ctseg.core.atomic import atomic_path  # noqa: E402
from ctseg.core.errors import InputError  # noqa: E402
from ctseg.report.tables import read_tsv  # noqa: E402


def _save(fig: plt.Figure, out_png: str | Path) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _no_data(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_dice_box(metrics_tsv: str | Path, out_png: str | Path) -> None:
    """Box plot of Dice per label (pooled over cases and views) from a ``metrics.tsv``."""
    df = read_tsv(metrics_tsv)
    if df is None:
        raise InputError("metrics table not found", path=metrics_tsv)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * df.get("label", pd.Series()).nunique() + 2), 4))
    if df.empty or "dice" not in df.columns:
        _no_data(ax, "no metric rows")
    else:
        groups = []
        names = []
        for (_lab, name), g in df.groupby(["label", "name"], sort=True):
            d = pd.to_numeric(g["dice"], errors="coerce").dropna().to_numpy()
            if d.size:
                groups.append(d)
                names.append(str(name))
        if groups:
            ax.boxplot(groups, tick_labels=names)
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("Dice")
            ax.set_title("Dice per label")
            ax.tick_params(axis="x", rotation=45)
        else:
            _no_data(ax, "no defined Dice values")
    fig.tight_layout()
    _save(fig, out_png)


def plot_centroid_errors(centroids_tsv: str | Path, out_png: str | Path) -> None:
    """Centroid error (mm) per vertebra, one point per case, with the 20 mm identification limit."""
    df = read_tsv(centroids_tsv)
    if df is None:
        raise InputError("centroids table not found", path=centroids_tsv)
    fig, ax = plt.subplots(figsize=(7, 4))
    found = df[df["status"] == "found"] if not df.empty and "status" in df.columns else df
    if found is None or found.empty:
        _no_data(ax, "no matched vertebrae")
    else:
        order = found[["label", "vertebra"]].drop_duplicates().sort_values("label")
        for i, (lab, _name) in enumerate(order.itertuples(index=False)):
            g = found[found["label"] == lab]
            err = pd.to_numeric(g["error_mm"], errors="coerce")
            ok = g["identified"].astype(str).str.lower().isin(["true", "1"])
            ax.scatter(
                np.full(int(ok.sum()), i),
                err[ok],
                c="tab:green",
                s=18,
                label="identified" if i == 0 else None,
            )
            ax.scatter(
                np.full(int((~ok).sum()), i),
                err[~ok],
                c="tab:red",
                marker="x",
                s=18,
                label="not identified" if i == 0 else None,
            )
        ax.axhline(20.0, color="grey", ls="--", lw=1, label="20 mm")
        ax.set_xticks(range(len(order)), [str(v) for v in order["vertebra"]], rotation=45)
        ax.set_ylabel("centroid error (mm)")
        ax.set_title("Centroid error per vertebra")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out_png)


def plot_overlays(
    ct_path: str | Path, truth_path: str | Path, pred_path: str | Path, out_png: str | Path
) -> None:
    """Prediction (red) vs truth (green) contours on mid-sagittal, coronal and axial CT slices.

    The slices pass through the centre of mass of the truth foreground (the spine), or the
    volume centre when the truth is empty; pixel aspect follows the voxel spacing.
    """
    ct_img = sitk.ReadImage(str(ct_path))
    ct = sitk.GetArrayFromImage(ct_img).astype(np.float32)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path)))
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_path)))
    if not (ct.shape == truth.shape == pred.shape):
        raise InputError(
            f"CT {ct.shape}, truth {truth.shape} and prediction {pred.shape} differ in shape",
            path=pred_path,
        )
    sz, sy, sx = (float(s) for s in reversed(ct_img.GetSpacing()))
    fg = np.argwhere(truth > 0)
    zc, yc, xc = fg.mean(axis=0).round().astype(int) if len(fg) else np.array(ct.shape) // 2
    views = [
        ("sagittal", (slice(None), slice(None), xc), sz / sy),
        ("coronal", (slice(None), yc, slice(None)), sz / sx),
        ("axial", (zc, slice(None), slice(None)), sy / sx),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.5))
    for ax, (title, sl, aspect) in zip(axes, views, strict=True):
        origin = "upper" if title == "axial" else "lower"
        ax.imshow(ct[sl], cmap="gray", vmin=-200, vmax=1200, aspect=aspect, origin=origin)
        for mask, colour in ((truth[sl] > 0, "lime"), (pred[sl] > 0, "red")):
            if mask.any() and not mask.all():
                ax.contour(
                    mask.astype(np.uint8),
                    levels=[0.5],
                    colors=colour,
                    linewidths=0.8,
                    origin=origin,
                )
        ax.set_title(title)
        ax.set_axis_off()
    fig.suptitle("truth (green) vs prediction (red)")
    fig.tight_layout()
    _save(fig, out_png)
