"""Losses and overlap metrics for training.

Seed 003's loss: 0.5 soft Dice + 0.5 cross entropy. The Dice term averages over foreground
classes only (background Dice is ~1 and would dilute the gradient) and is computed over the
whole batch, which keeps it defined for patches where a class is absent.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over foreground classes present in prediction or target.

    ``logits`` [B, C, *spatial], ``target`` [B, *spatial] int64 class indices.
    """
    n_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, n_classes).movedim(-1, 1).float()
    dims = (0, *range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    fg = dice[1:] if n_classes > 1 else dice
    return 1.0 - fg.mean()


class DiceCELoss(nn.Module):
    """``w_dice * soft Dice loss + w_ce * cross entropy`` (defaults 0.5 / 0.5, seed 003)."""

    def __init__(
        self, w_dice: float = 0.5, w_ce: float = 0.5, class_weights: torch.Tensor | None = None
    ):
        super().__init__()
        self.w_dice, self.w_ce = float(w_dice), float(w_ce)
        self.register_buffer("class_weights", class_weights if class_weights is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.w_ce:
            loss = loss + self.w_ce * F.cross_entropy(
                logits.float(), target, weight=self.class_weights
            )
        if self.w_dice:
            loss = loss + self.w_dice * soft_dice_loss(logits, target)
        return loss


def dice_per_class(
    pred: np.ndarray, truth: np.ndarray, classes: list[int] | range
) -> dict[int, float]:
    """Hard Dice per class value; NaN where the class is absent from both."""
    out = {}
    for c in classes:
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        out[int(c)] = float(2 * np.logical_and(p, t).sum() / denom) if denom else float("nan")
    return out


def mean_foreground_dice(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> float:
    """Mean hard Dice over foreground classes present in the truth or the prediction."""
    vals = [v for v in dice_per_class(pred, truth, range(1, n_classes)).values() if not np.isnan(v)]
    return float(np.mean(vals)) if vals else 1.0
