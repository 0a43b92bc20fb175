"""Shared fixtures: the read-only reference data (../shared beside the repo) and a real
loopback server with the default model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from del_server.threaded import ServerThread

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


@pytest.fixture(scope="session")
def serve():
    """`with serve(settings) as loopback:` starts a real server with any settings."""
    from del_server.threaded import serve_in_thread

    return serve_in_thread


@pytest.fixture(scope="session")
def stories260k(shared_dir) -> Path:
    return shared_dir / "models" / "stories260K"


@pytest.fixture(scope="session")
def server(shared_dir, serve) -> Iterator[ServerThread]:
    from del_server.settings import Settings

    settings = Settings(
        model=str(STORIES260K),
        port=0,
        metrics_port=0,
        enable_raw=True,
        max_running=4,
        max_waiting=8,
        max_prompt_tokens=256,
        max_new_tokens=128,
        grace_s=2.0,
    )
    with serve(settings) as loopback:
        yield loopback
