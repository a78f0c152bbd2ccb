"""Scoring predictions against truth: overlap and surface metrics, centroids and identification."""
