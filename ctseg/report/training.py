"""Training-stage figures: the per-epoch loss / validation-metric curves (``loss.png``).

matplotlib is imported when a figure is drawn, not with this module, so that the trainers that
import it start without it.
"""

from __future__ import annotations

from pathlib import Path

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
