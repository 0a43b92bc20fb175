"""A real server, or any asyncio work, on an event loop of its own in a background thread.

Benchmarks, the evaluation and the tests drive a server from synchronous code (the sync SDK,
timing loops) in the same process. The server's loop must keep running while that code
blocks, so it runs on a thread of its own, as a deployment's would in a process of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from .runtime import ServedModel
from .server import RunningServer, start
from .settings import Settings

T = TypeVar("T")
STOP_GRACE_S = 1.0  # streams still open when the block ends get this long to finish
STOP_TIMEOUT_S = 60.0
JOIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LoopThread:
    """An event loop running on a daemon thread: coroutines are handed to it from outside."""

    loop: asyncio.AbstractEventLoop

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Start `coroutine` on the loop and return at once (to wait for it later)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coroutine` on the loop and wait for its result."""
        return self.submit(coroutine).result(timeout)


@dataclass(frozen=True)
class ServerThread(LoopThread):
    """A started server and the loop it runs on."""

    running: RunningServer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.running.metrics_port}/metrics"


@contextmanager
def loop_in_thread(name: str) -> Iterator[LoopThread]:
    """A new event loop on a daemon thread called `name`, stopped on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    try:
        yield LoopThread(loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(JOIN_TIMEOUT_S)


@contextmanager
def serve_in_thread(
    settings: Settings, *, served: ServedModel | None = None
) -> Iterator[ServerThread]:
    """Start a server with `settings` (and `served`, when already loaded) on a loop thread of
    its own; returns once it is SERVING, and stops it on exit."""
    with loop_in_thread("del-server") as thread:
        running = thread.call(start(settings, served=served))
        try:
            yield ServerThread(thread.loop, running)
        finally:
            thread.call(running.stop(grace_s=STOP_GRACE_S), STOP_TIMEOUT_S)
