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


def write_history(path: Path, history: list[dict]) -> None:
    lines = ["\t".join(HISTORY_COLUMNS)]
    for h in history:
        lines.append(
            "\t".join(
                f"{h[c]:.6g}" if isinstance(h[c], float) else str(h[c]) for c in HISTORY_COLUMNS
            )
        )
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def plot_history(path: Path, history: list[dict], title: str) -> None:
    """Loss (train, val) and validation Dice per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a1.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    a1.set_xlabel("epoch")
    a1.set_ylabel("0.5 Dice + 0.5 CE loss")
    a1.legend()
    a2.plot(ep, [h["val_dice"] for h in history], "o-", color="C2")
    a2.set_ylim(0, 1)
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation mean Dice")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
