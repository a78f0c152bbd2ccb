"""The compute device a job runs on: one resolver for training, inference and DRR rendering."""

from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else as torch names it ('cuda:1')."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
