"""Shared fixtures: where the shared real data lives, and torch kept to the machine's cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CTSEG_SHARED", REPO.parent / "shared"))
REAL_SERIES = SHARED / "data" / "real" / "ct_dicom_series"
REAL_LABELS = SHARED / "data" / "real" / "ct_dicom_series_labels.nii.gz"


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def real_series_dir() -> Path:
    if not REAL_SERIES.is_dir():
        pytest.skip(
            f"shared real CT series not found at {REAL_SERIES} (it is not part of the repository)"
        )
    return REAL_SERIES


@pytest.fixture(scope="session")
def real_labels_path() -> Path:
    if not REAL_LABELS.is_file():
        pytest.skip(
            f"shared real label map not found at {REAL_LABELS} (it is not part of the repository)"
        )
    return REAL_LABELS
