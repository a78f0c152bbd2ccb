"""Applying a trained model to a volume: sliding-window prediction and its post-processing."""
