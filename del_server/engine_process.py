"""The engine in a process of its own (`--engine-process`).

In one process the engine thread and the event loop share the GIL: every forward pass waits
while gRPC reads prompts and writes tokens, and every message waits while the model runs. Here
the engine (`generation.Engine`, unchanged) runs in a child process with its own copy of the
model; requests go to it and events come back through one pipe, a round's events in one
message. `ProcessEngine` has the in-process engine's interface (`submit`, `start`, `stop`,
`running`, `waiting`, `kv_cache_bytes`), so the service does not know which it has.

The child ignores SIGINT and SIGTERM (the server drains, then stops it) and exits when the
pipe closes, so it never outlives the server. If it dies, every open request fails
(INTERNAL), later ones are refused (UNAVAILABLE) and health turns NOT_SERVING for good: the
orchestrator restarts the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import pickle
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from del_client.sampling import Sampling

from .errors import OverloadedError, ShuttingDownError
from .generation import Event, FailedEvent, FinishEvent, RequestHandle, _deliver

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 30.0
# How often the child, waiting for requests, checks whether the engine's counts changed without
# an event to carry them (a cancelled sequence leaves at the engine's next round, silently).
STATS_INTERVAL_S = 0.05


@dataclass(frozen=True)
class EngineSpec:
    """What the child needs to build the model and the engine."""

    model: str
    model_format: str
    dtype: str
    max_running: int
    max_waiting: int
    stream_interval_s: float
    join_wait_s: float
    threads: int
    log_level: str = "INFO"


class EngineDiedError(RuntimeError):
    """The engine process exited while requests were open."""


class ProcessEngine:
    def __init__(self, spec: EngineSpec) -> None:
        self._spec = spec
        self._capacity = spec.max_running + spec.max_waiting
        self._handles: dict[int, RequestHandle] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()  # the pipe's sending end and the handles
        self._stats = (0, 0, 0, 0)  # running, waiting, KV used and allocated, from the child
        self._stopping = False
        self._dead = False
        self._process: multiprocessing.process.BaseProcess | None = None
        self._reader: threading.Thread | None = None
        self.on_death: Callable[[], None] | None = None  # told, from a thread, if the child dies

    @property
    def running(self) -> int:
        return self._stats[0]

    @property
    def waiting(self) -> int:
        return self._stats[1]

    @property
    def kv_cache_bytes(self) -> tuple[int, int]:
        return self._stats[2], self._stats[3]

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start the child; it loads the model while the first requests wait in the pipe."""
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_child_main, args=(self._spec, child), name="del-engine", daemon=True
        )
        self._process.start()
        child.close()
        self._reader = threading.Thread(target=self._read, name="del-engine-events", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        """Fail what is still open (ShuttingDownError) and wait for the child to exit."""
        self._stopping = True
        if self._process is None:
            return
        with contextlib.suppress(OSError):  # the child is gone already
            self._send(("stop",))
        self._process.join(STOP_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)

    def submit(self, request_id: str, inputs: torch.Tensor, sampling: Sampling) -> RequestHandle:
        """Queue a request; OverloadedError when the engine holds all it may. Call from a loop."""
        handle = RequestHandle(request_id, asyncio.Queue(), asyncio.get_running_loop())
        with self._lock:
            if self._dead or self._stopping:
                raise ShuttingDownError("the engine is not running")
            if len(self._handles) >= self._capacity:
                running, waiting = self._stats[:2]
                raise OverloadedError(f"server busy: {running} running, {waiting} waiting")
            key = next(self._keys)
            self._handles[key] = handle
            handle.on_cancel = lambda: self._cancel(key)
            message = ("submit", key, request_id, inputs.detach().cpu().numpy(), sampling)
            self._conn.send(message)
        return handle

    def _cancel(self, key: int) -> None:
        """The stream is gone: its slot is free now, and the child drops its sequence."""
        with self._lock:
            if self._handles.pop(key, None) is None:
                return  # it had ended
            with contextlib.suppress(OSError):  # the child is gone: nothing to cancel
                self._conn.send(("cancel", key))

    def _send(self, message: tuple) -> None:
        with self._lock:
            self._conn.send(message)

    def _read(self) -> None:
        """Hand each batch of events from the child to its requests' loops."""
        while True:
            try:
                batch, self._stats = self._conn.recv()
            except (EOFError, OSError):
                break
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}
            with self._lock:
                for key, events in batch:
                    handle = self._handles.get(key)
                    if handle is None:
                        continue
                    if isinstance(events[-1], FinishEvent | FailedEvent):
                        del self._handles[key]
                    by_loop.setdefault(handle.loop, []).append((handle, events))
            _hand_over(by_loop)
        with self._lock:
            self._dead = True
            handles, self._handles = self._handles, {}
        if handles:
            error: Exception = (
                ShuttingDownError("the server is shutting down")
                if self._stopping
                else EngineDiedError("the engine process exited")
            )
            by_loop = {}
            for handle in handles.values():
                by_loop.setdefault(handle.loop, []).append((handle, [FailedEvent(error)]))
            _hand_over(by_loop)
        if not self._stopping:
            log.error("the engine process exited", extra={"open_requests": len(handles)})
            if self.on_death is not None:
                self.on_death()


def _hand_over(by_loop: dict[asyncio.AbstractEventLoop, list]) -> None:
    for loop, events in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody listens
            loop.call_soon_threadsafe(_deliver, events)


class _PipeLoop:
    """In the child: where the engine hands its events. Sends them to the parent, by key, with
    the engine's counts; the child's main thread sends the counts alone when they change
    without events (`send_stats_if_changed`). One lock for the keys and the pipe."""

    def __init__(self, conn, engine_stats) -> None:
        self._conn = conn
        self._stats = engine_stats
        self._lock = threading.Lock()
        self._sent_stats: tuple | None = None
        self._keys: dict[RequestHandle, int] = {}

    def add(self, handle: RequestHandle, key: int) -> None:
        with self._lock:
            self._keys[handle] = key

    def forget(self, handle: RequestHandle) -> None:
        """A cancelled request: the parent has dropped it, so its later events are not sent."""
        with self._lock:
            self._keys.pop(handle, None)

    def live_keys(self) -> set[int]:
        with self._lock:
            return set(self._keys.values())

    def call_soon_threadsafe(self, _callback, events: list[tuple[RequestHandle, list[Event]]]):
        with self._lock:
            batch = []
            for handle, sent in events:
                key = self._keys.get(handle)
                if key is None:
                    continue  # cancelled
                if isinstance(sent[-1], FinishEvent | FailedEvent):
                    del self._keys[handle]
                batch.append((key, [_picklable(event) for event in sent]))
            self._send(batch)

    def send_stats_if_changed(self) -> None:
        """The counts alone, when the running or waiting count differs from the last sent (the
        KV cache's bytes change every round, and ride on the events)."""
        with self._lock:
            if self._sent_stats is None or self._stats()[:2] != self._sent_stats[:2]:
                self._send([])

    def _send(self, batch: list) -> None:
        self._sent_stats = self._stats()
        self._conn.send((batch, self._sent_stats))


def _picklable(event: Event) -> Event:
    """A FailedEvent whose error would not survive the pipe carries its text instead."""
    if isinstance(event, FailedEvent):
        try:
            pickle.loads(pickle.dumps(event.error))
        except Exception:
            return FailedEvent(RuntimeError(f"{type(event.error).__name__}: {event.error}"))
    return event


def _child_main(spec: EngineSpec, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops the engine after its drain
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from .backends.transformers import TransformersBackend
    from .generation import Engine
    from .logs import configure
    from .models import load_model

    configure(spec.log_level)  # the server's JSON lines, on the same stderr
    torch.set_num_threads(spec.threads)
    loaded = load_model(spec.model, format=spec.model_format, dtype=getattr(torch, spec.dtype))
    engine = Engine(
        TransformersBackend(loaded.model),
        loaded.tokenizer,
        eos_id=loaded.eos_id,
        anchor_id=loaded.tokenizer.encode("a", add_special_tokens=False).ids[-1],
        max_running=spec.max_running,
        max_waiting=spec.max_running + spec.max_waiting,  # the parent bounds the total
        stream_interval_s=spec.stream_interval_s,
        join_wait_s=spec.join_wait_s,
    )
    sender = _PipeLoop(conn, lambda: (engine.running, engine.waiting, *engine.kv_cache_bytes))
    handles: dict[int, RequestHandle] = {}
    engine.start()
    try:
        while True:
            try:
                if not conn.poll(STATS_INTERVAL_S):
                    sender.send_stats_if_changed()
                    continue
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "submit":
                _, key, request_id, inputs, sampling = message
                handle = RequestHandle(request_id, None, sender)
                sender.add(handle, key)
                handles[key] = handle
                engine.enqueue(handle, torch.from_numpy(inputs), sampling)
            elif message[0] == "cancel":
                if (handle := handles.pop(message[1], None)) is not None:
                    handle.cancel()
                    sender.forget(handle)
            elif message[0] == "stop":
                break
            _forget_finished(handles, sender)
    finally:
        engine.stop()  # fails whatever is still open, through the pipe
        conn.close()


def _forget_finished(handles: dict[int, RequestHandle], sender: _PipeLoop) -> None:
    """Drop the handles of requests whose end was sent (the sender forgot them)."""
    if len(handles) > 64:
        live = sender.live_keys()
        if len(handles) <= 2 * len(live) + 64:
            return
        for key in [k for k in handles if k not in live]:
            del handles[key]
