"""Training-stage figures: the per-epoch loss / validation-metric curves (``loss.png``) and the
montage of an augmentation cube's samples (``{cube}_qc.png``).

matplotlib is imported when a figure is drawn, not with this module, so that the trainers that
import it start without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ctseg.core.atomic import atomic_path


def plot_history(
    path: Path,
    history: list[dict],
    title: str,
    *,
    loss_label: str = "0.5 Dice + 0.5 CE loss",
    metric: str = "val_dice",
    metric_label: str = "validation mean Dice",
) -> None:
    """Loss (train, val) and one validation metric in [0, 1] per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a1.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    a1.set_xlabel("epoch")
    a1.set_ylabel(loss_label)
    a1.legend()
    a2.plot(ep, [h[metric] for h in history], "o-", color="C2")
    a2.set_ylim(0, 1.02)
    a2.set_xlabel("epoch")
    a2.set_ylabel(metric_label)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def plot_cube_samples(cube: Mapping, prov: dict, out_png: Path, *, n_show: int = 4) -> None:
    """The montage of a cube's QC (``{cube}_qc.png``): for ``n_show`` samples spread over the
    cube, the central axial, coronal and sagittal slices of the image with the label overlaid.

    ``cube`` is the open cube file (datasets ``image``, ``label``, ``case_index``,
    ``copy_index``, see :mod:`ctseg.training.cubes`) and ``prov`` its provenance (``cases``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = cube["image"].shape[0]
    show = sorted(set(np.linspace(0, n - 1, min(n_show, n)).round().astype(int).tolist()))
    fig, axes = plt.subplots(len(show), 3, figsize=(9, 3 * len(show)), squeeze=False)
    for r, i in enumerate(show):
        img, lab = cube["image"][i], cube["label"][i]
        z, y, x = (s // 2 for s in img.shape)
        views = [
            ("axial", img[z], lab[z]),
            ("coronal", img[:, y][::-1], lab[:, y][::-1]),
            ("sagittal", img[:, :, x][::-1], lab[:, :, x][::-1]),
        ]
        for c, (name, im, lb) in enumerate(views):
            ax = axes[r][c]
            ax.imshow(im, cmap="gray", vmin=0, vmax=1)
            ax.imshow(
                np.ma.masked_equal(lb, 0),
                cmap="tab20",
                alpha=0.5,
                vmin=0,
                vmax=28,
                interpolation="nearest",
            )
            ax.set_title(
                f"#{i} {prov['cases'][int(cube['case_index'][i])]} copy {int(cube['copy_index'][i])} {name}",
                fontsize=7,
            )
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
