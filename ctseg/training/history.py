"""Per-epoch training history: the TSV (its plot, ``loss.png``, is drawn by
:func:`ctseg.report.training.plot_history`)."""

from __future__ import annotations

from pathlib import Path

from ctseg.core.atomic import atomic_path

__all__ = ["HISTORY_COLUMNS", "write_history"]

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
