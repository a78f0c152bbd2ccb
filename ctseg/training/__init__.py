"""Augmentation cubes and model training: augmentation, cube files, losses, the trainer, DDP."""
