"""Per-epoch training history: the TSV and its loss / validation-Dice plot."""

from __future__ import annotations

from pathlib import Path

from ctseg.core.atomic import atomic_path

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_dice",
    "lr",
    "seconds",
    "data_wait_fraction",
)


def write_history(
    path: Path, history: list[dict], columns: tuple[str, ...] = HISTORY_COLUMNS
) -> None:
    """history.tsv: one row per epoch (any trainer's columns; the segmentation trainer's by
    default)."""
    lines = ["\t".join(columns)]
    for h in history:
        lines.append(
            "\t".join(f"{h[c]:.6g}" if isinstance(h[c], float) else str(h[c]) for c in columns)
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


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
