"""Shared fixtures: where the read-only reference data lives (../shared beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEL_SHARED_DIR", REPO.parent / "shared"))
STORIES260K = SHARED / "models" / "stories260K"

# Timing is measured by `make bench`, not by tests: the first call of a compiled kernel may
# take a second, which is not a failure.
settings.register_profile("del", deadline=None)
settings.load_profile("del")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"reference data not found at {SHARED}; set DEL_SHARED_DIR")
    return SHARED
