"""Shared fixtures: the read-only reference data (../shared beside the repo) and a real
loopback server with the default model."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass
class LoopbackServer:
    """A real del-server on 127.0.0.1 with the default model, running on its own event loop."""

    running: object  # del_server.server.RunningServer
    loop: asyncio.AbstractEventLoop

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.running.metrics_port}/metrics"

    def call(self, coroutine, timeout: float = 60):
        """Run a coroutine on the server's loop (e.g. to inspect the engine)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextmanager
def serving(settings) -> Iterator[LoopbackServer]:
    """Start a real server with `settings` on its own loop thread; stop it on exit."""
    from del_server.server import start

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="loopback-server", daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(start(settings), loop).result(timeout=180)
    try:
        yield LoopbackServer(running, loop)
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(grace_s=1.0), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def serve():
    """`with serve(settings) as loopback:` starts a real server with any settings."""
    return serving


@pytest.fixture(scope="session")
def stories260k(shared_dir) -> Path:
    return shared_dir / "models" / "stories260K"


@pytest.fixture(scope="session")
def server(shared_dir) -> Iterator[LoopbackServer]:
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
    with serving(settings) as loopback:
        yield loopback
