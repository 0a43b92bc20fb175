"""From decoded prompt embeddings to streamed tokens (DESIGN §4).

    symbols (T, k) ─ front-end (front_end.py: W_d·x̂, or the posterior mean) ─ h (T, d)
    inputs = [soft prompt for the privacy level (m, d)] + [clean BOS (1, d)] + h
or, when the adapter has a particle reader (particle_reader.py):
    symbols ─ one prompt drawn from the LLM's posterior ─ ids (T,), or none at all
    inputs = [reader prefix (m, d)] + [clean BOS (1, d)] + embed(ids)
    ─ frozen LLM with KV cache ─ sample ─ token events

One scheduler thread owns the model. Each round it prefills the requests that just joined
(one forward pass for all of them, left-padded to the longest prompt) and then advances every
running sequence by one token in a single batched forward pass (continuous batching: requests
join and leave between rounds). Each pass's tokens are drawn in one batched operation, and
its events go back to the requests' asyncio queues in one `call_soon_threadsafe` per loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer

from del_client.mechanism import PrivacySpec, decode_table
from del_client.proto import inference_pb2
from del_client.sampling import Sampling

from .adapter import Adapter
from .attacks.mechanisms import Binomial
from .backends.base import Backend, DecodeBatch
from .errors import OverloadedError, ShuttingDownError
from .front_end import PosteriorFrontEnd
from .particle_reader import ParticleReader
from .sampling import FinishReason, Sampler, TextStream, sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrivatePrompt:
    """The symbols of the client's tokens, their mechanism, and the soft prompt that goes
    with them."""

    symbols: np.ndarray  # (T, k) uint8
    spec: PrivacySpec
    # The μ of the soft prompt to prepend: a key of Adapter.soft_prompts, chosen by
    # levels.choose_level (the request's level); None, or any other value: no soft prompt.
    mu: float | None

    @property
    def x_hat(self) -> np.ndarray:
        """(T, k) float32 decoded estimates."""
        return decode_table(self.spec)[self.symbols]


@dataclass(frozen=True)
class RawPrompt:
    """The no-privacy baseline: the client's unprojected embeddings."""

    embeddings: np.ndarray  # (T, d) float32


@dataclass(frozen=True, slots=True)
class TokenEvent:
    token_id: int | None  # None: text held back until the end, no new token
    text: str
    at: float = field(default_factory=time.perf_counter)  # when the engine made it


@dataclass(frozen=True)
class FinishEvent:
    reason: FinishReason
    generated_tokens: int


@dataclass(frozen=True)
class FailedEvent:
    error: BaseException


Event = TokenEvent | FinishEvent | FailedEvent


class BuiltPrompt(NamedTuple):
    inputs: torch.Tensor  # (m + 1 + T, d)
    level: float | None  # the request's level μ; None when it has none
    reading: int  # inference_pb2.PromptReading: how the prompt was read


class PromptBuilder:
    """Turns what the client sent into the LLM's input embeddings."""

    def __init__(
        self,
        backend: Backend,
        adapter: Adapter,
        bos_id: int | None,
        front_end: PosteriorFrontEnd | None = None,
        reader: ParticleReader | None = None,
    ) -> None:
        self._backend = backend
        self._adapter = adapter
        self._front_end = front_end  # None: the linear front-end
        self._reader = reader  # reads every private prompt when set
        self._prefix_ids = [bos_id] if bos_id is not None else []
        self._template: torch.Tensor | None = None  # embedded once, on first use

    def build(
        self, prompt: PrivatePrompt | RawPrompt, abandon: threading.Event | None = None
    ) -> BuiltPrompt:
        """The LLM's input for `prompt`, its level and how it was read; `abandon` stops a
        particle reader's read once set (its request is gone)."""
        if self._template is None and self._prefix_ids:
            self._template = self._backend.embed(self._prefix_ids)
        template = self._template
        level = getattr(prompt, "mu", None)
        level = level if level in self._adapter.soft_prompts else None
        if isinstance(prompt, RawPrompt):
            prefix, body = None, torch.from_numpy(prompt.embeddings)
            reading = inference_pb2.PROMPT_READING_RAW
        elif self._reader is not None:
            ids = self._reader.read(prompt.symbols, Binomial(prompt.spec), level, abandon)
            prefix, body = self._reader.prefix, self._backend.embed(ids.tolist())
            reading = (
                inference_pb2.PROMPT_READING_PARTICLE
                if len(ids)
                else inference_pb2.PROMPT_READING_IGNORED
            )
        else:
            prefix, body = self._adapter.soft_prompts.get(level), self._body(prompt)
            reading = inference_pb2.PROMPT_READING_FRONT_END
        parts = [prefix] if prefix is not None else []
        parts += [template] if template is not None else []
        parts.append(body)
        dtype = parts[-1].dtype
        return BuiltPrompt(torch.cat([p.to(dtype) for p in parts]), level, reading)

    def _body(self, prompt: PrivatePrompt) -> torch.Tensor:
        if self._front_end is None:
            return self._adapter.deproject(torch.from_numpy(prompt.x_hat))
        # The level's trained gate and temperature, else (no level) the plain posterior mean.
        parameters = self._adapter.front_ends.get(prompt.mu)
        mechanism = Binomial(prompt.spec)
        with torch.no_grad():
            body = self._front_end.inputs(prompt.symbols[None], mechanism, parameters)[0]
        return body.to(self._adapter.up.dtype)


@dataclass(eq=False)
class RequestHandle:
    """The asyncio side of one request: read `events`, call `cancel()` when the client leaves.

    `loop` is where the engine hands its events (anything with `call_soon_threadsafe`);
    `on_cancel`, when set, is told of a cancel too (an engine in another process).
    """

    request_id: str
    events: asyncio.Queue[Event] | None
    loop: asyncio.AbstractEventLoop
    cancelled: threading.Event = field(default_factory=threading.Event)
    on_cancel: Callable[[], None] | None = None

    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self.cancelled.set()
            if self.on_cancel is not None:
                self.on_cancel()


def _deliver(events: list[tuple[RequestHandle, list[Event]]]) -> None:
    """On the event loop: hand events to their requests' queues."""
    for handle, sent in events:
        for event in sent:
            handle.events.put_nowait(event)


@dataclass(eq=False)
class _Sequence:
    handle: RequestHandle
    inputs: torch.Tensor  # (T, d)
    sampler: Sampler
    text: TextStream
    arrived: float = field(default_factory=time.perf_counter)
    last_token: int | None = None
    generated: int = 0
    done: bool = False  # finished or failed; leaves at the end of the round


class Engine:
    """Owns the backend on one thread; every admitted request advances one token per round."""

    def __init__(
        self,
        backend: Backend,
        tokenizer: Tokenizer,
        *,
        eos_id: int | None,
        anchor_id: int,
        max_running: int,
        max_waiting: int,
        stream_interval_s: float = 0.0,
        join_wait_s: float = 0.0,
    ) -> None:
        self._backend = backend
        self._tokenizer = tokenizer
        self._eos_id = eos_id
        self._anchor_id = anchor_id
        self._max_running = max_running
        self._max_waiting = max_waiting
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []  # prefilled: the rows of the batch, in order
        self._joining: list[_Sequence] = []  # admitted, to be prefilled together
        self._join_wait_s = join_wait_s
        self._batch: DecodeBatch = backend.new_batch()
        # Events not yet handed to their loops, by request; the requests whose events go out
        # at the next flush whatever the interval (a first token, an end).
        self._outbox: dict[RequestHandle, list[Event]] = {}
        self._urgent: set[RequestHandle] = set()
        self._stream_interval_s = stream_interval_s
        self._flushed_at = 0.0
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="del-engine", daemon=True)

    @property
    def running(self) -> int:
        return len(self._running) + len(self._joining)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_cache_bytes(self) -> tuple[int, int]:
        """(used, allocated) bytes of the running rows' KV cache; (0, 0) where the batch does
        not say. Read from any thread: a snapshot, not a lock."""
        batch = self._batch
        return getattr(batch, "used_bytes", 0), getattr(batch, "allocated_bytes", 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join()

    def submit(self, request_id: str, inputs: torch.Tensor, sampling: Sampling) -> RequestHandle:
        """Queue a request; OverloadedError when the waiting queue is full. Call from the loop."""
        handle = RequestHandle(request_id, asyncio.Queue(), asyncio.get_running_loop())
        self.enqueue(handle, inputs, sampling)
        return handle

    def enqueue(self, handle: RequestHandle, inputs: torch.Tensor, sampling: Sampling) -> None:
        """Queue a request whose events go to `handle.loop`; OverloadedError when full."""
        sequence = _Sequence(
            handle=handle,
            inputs=inputs,
            sampler=Sampler(sampling),
            text=TextStream(self._tokenizer, sampling.stop, self._anchor_id),
        )
        with self._wakeup:
            if len(self._waiting) >= self._max_waiting:
                raise OverloadedError(
                    f"server busy: {self.running} running, {len(self._waiting)} waiting"
                )
            self._waiting.append(sequence)
            self._wakeup.notify()

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                if not (self._running or self._joining or self._waiting):
                    self._flush(everything=True)
                while not (self._stopping or self._running or self._joining or self._waiting):
                    self._wakeup.wait()
                if self._stopping:
                    break
                while self._waiting and self.running < self._max_running:
                    self._joining.append(self._waiting.popleft())
            try:
                self._round()
            except Exception as exc:  # a bug here must not leave the server without an engine
                self._fail([s for s in [*self._running, *self._joining] if not s.done], exc)
                self._running, self._joining = [], []
                self._batch = self._backend.new_batch()
            self._flush()
        for sequence in [*self._running, *self._joining, *self._waiting]:
            self._send(sequence, FailedEvent(ShuttingDownError("the server is shutting down")))
        self._flush(everything=True)

    def _round(self) -> None:
        """Prefill the sequences that joined, then advance every running one by one token.

        While rows are decoding, joiners wait up to `join_wait_s` (from their arrival) so that
        several share one prefill pass, which costs about as much as a decoding pass whether
        it holds one prompt or several; an idle engine prefills at once.
        """
        self._joining = [s for s in self._joining if not s.handle.cancelled.is_set()]
        if self._joining and (
            not self._running or time.perf_counter() - self._joining[0].arrived >= self._join_wait_s
        ):
            joining, self._joining = self._joining, []
            self._prefill(joining)
            self._flush()  # their first tokens go out before the decoding pass
        self._drop_finished()
        if self._running:
            self._decode()
            self._drop_finished()

    def _prefill(self, joining: list[_Sequence]) -> None:
        """One forward pass for all joining sequences; when it or their joining the batch
        fails, each is tried alone, so only the one that cannot join fails."""
        try:
            logits, state = self._backend.prefill_many([s.inputs for s in joining])
            self._batch.add(state)  # all or nothing: the batch is unchanged when it fails
        except Exception as exc:  # e.g. out of memory: these requests fail, the others go on
            if len(joining) == 1:
                self._fail(joining, exc)
                return
            joined, rows = [], []
            for sequence in joining:
                try:
                    row, state = self._backend.prefill(sequence.inputs)
                    self._batch.add(state)
                except Exception as alone:
                    self._fail([sequence], alone)
                    continue
                joined.append(sequence)
                rows.append(row)
            if not joined:
                return
            joining, logits = joined, torch.stack(rows)
        self._running += joining  # the batch's new last rows, in the same order
        self._advance(joining, logits)

    def _decode(self) -> None:
        try:
            logits = self._batch.decode([s.last_token for s in self._running])
        except Exception as exc:  # the rows share one state: each of them fails
            self._fail(self._running, exc)
            return
        self._advance(self._running, logits)

    def _drop_finished(self) -> None:
        """Remove finished and cancelled sequences, and their rows of the batch.

        The last rows move into the places of the rows that leave (the batch copies one row
        for each, not every row after it); the running list follows the rows' new order.
        """
        stays = [not (s.done or s.handle.cancelled.is_set()) for s in self._running]
        if all(stays):
            return
        size = sum(stays)
        order = list(range(size))
        places = [i for i in order if not stays[i]]
        lasts = [i for i in range(size, len(stays)) if stays[i]]
        for place, last in zip(places, lasts, strict=True):
            order[place] = last
        self._batch.keep(order)
        self._running = [self._running[i] for i in order]

    def _send(self, sequence: _Sequence, event: Event, *, urgent: bool = True) -> None:
        self._outbox.setdefault(sequence.handle, []).append(event)
        if urgent:
            self._urgent.add(sequence.handle)

    def _flush(self, *, everything: bool = False) -> None:
        """Hand events to their loops, one call per loop: every request's once the stream
        interval has passed since the last time (or `everything`), else only the urgent ones
        (first tokens and ends: time to first token and the end never wait for it).

        Tokens held back go out together, so a stream gets one message per interval rather
        than one per round: fewer gRPC messages, each carrying several tokens.
        """
        now = time.perf_counter()
        if everything or now - self._flushed_at >= self._stream_interval_s:
            handles, self._flushed_at = list(self._outbox), now
        else:
            handles = [h for h in self._outbox if h in self._urgent]
        self._urgent.clear()
        if not handles:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for handle in handles:
            by_loop.setdefault(handle.loop, []).append((handle, self._outbox.pop(handle)))
        for loop, events in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, events)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                log.warning("events for a closed event loop dropped")

    def _fail(self, sequences: list[_Sequence], exc: Exception) -> None:
        ids = [s.handle.request_id for s in sequences]
        log.error("generation failed", exc_info=exc, extra={"request_ids": ids})
        for sequence in sequences:
            self._send(sequence, FailedEvent(exc))
            sequence.done = True

    def _advance(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        """Draw each sequence's next token from its row of `logits` (one batched draw) and
        send it; a row whose draw or text fails fails alone."""
        samplers = [s.sampler for s in sequences]
        try:
            tokens = sample(samplers, logits)
        except Exception:  # find the row(s) at fault
            tokens = []
            for sequence, row in zip(sequences, logits, strict=True):
                try:
                    tokens.append(sequence.sampler(row))
                except Exception as exc:
                    self._fail([sequence], exc)
                    tokens.append(None)
        at = time.perf_counter()
        for sequence, token in zip(sequences, tokens, strict=True):
            if token is None:
                continue
            try:
                sequence.done = self._step(sequence, token, at)
            except Exception as exc:
                self._fail([sequence], exc)

    def _step(self, sequence: _Sequence, token: int, at: float) -> bool:
        """Take `token` as the sequence's next and send it; True when the sequence is done."""
        sequence.last_token = token
        if token == self._eos_id:
            return self._finish(sequence, FinishReason.EOS)
        sequence.generated += 1
        delta = sequence.text.push(token)
        self._send(sequence, TokenEvent(token, delta, at), urgent=sequence.generated == 1)
        if sequence.text.stopped:
            return self._finish(sequence, FinishReason.STOP)
        if sequence.generated >= sequence.sampler.params.max_new_tokens:
            return self._finish(sequence, FinishReason.LENGTH)
        return False

    def _finish(self, sequence: _Sequence, reason: FinishReason) -> bool:
        rest = sequence.text.flush()
        if rest:
            self._send(sequence, TokenEvent(None, rest))
        self._send(sequence, FinishEvent(reason, sequence.generated))
        return True
