"""The SplitInference servicer: protobuf in and out at the edge, the engine in between.

A Generate stream is: one StreamHeader, Frames numbered from 0, one End; then the server
streams TokenChunks and one Final. Every violation ends the stream with a status code from
status.py; the engine and the other streams never notice. docs/PROTOCOL.md is the contract
from a client's side.

Frames are packed, or entropy-coded when the header says so (the manifest offers it); the
symbol model they are coded with is computed from the bundle once per mechanism, in a thread.

The header's level (named, or matched by its parameters: levels.py) decides the soft prompt
(an adapter with a particle reader reads every level's prompts through it instead), and the
Final says which level, if any, the request was served at. The server prepends a
clean BOS to every prompt, so frames must not carry it: a raw stream that starts with BOS's
embedding is refused (a private one cannot be checked: the server cannot read its tokens).

Every stream is bounded (SECURITY.md): it takes one of max_running + max_waiting slots before
it reads anything, waits at most idle_timeout_s for each client message, lives at most
max_request_s, and sends at most max_frames frames of max_frame_bytes each.

A Classify stream sends what a Generate stream sends (its sampling parameters unused) and gets
one ClassifyResponse: the label probabilities from the level's head, its prompt batched with
the others queued (classify_batcher.py). Each RPC is served by the server of its task only;
the other task's server answers FAILED_PRECONDITION.

Every stream, whatever its end, leaves one INFO log line ("request finished") with its
request id, status, privacy level, sizes and timings, never its text; an INTERNAL status
carries that request id, so its traceback can be found in the log. Both RPCs run inside one
lifecycle (`_stream`) that owns this: the status of any end, the slot, the metrics, the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch
from google.protobuf.message import DecodeError

from del_client.codec import ENCODINGS, FrameAssembler, RawSpec, payload_encoding, spec_from_params
from del_client.errors import (
    BundleMismatchError,
    DELError,
    FrameError,
    LimitExceededError,
    RequestOptionError,
)
from del_client.mechanism import PrivacySpec
from del_client.parameters import SUPPORTED_BITS, wire_bytes
from del_client.proto import inference_pb2, inference_pb2_grpc
from del_client.sampling import Sampling
from del_client.symbol_model import SymbolModel

from . import __version__
from .adapter import ParticleReading
from .attacks.recovery import Recovery
from .calibration import MeasuredUtility
from .classification import EncoderInput
from .errors import (
    IdleStreamError,
    MechanismDisabledError,
    OverloadedError,
    RequestTimeoutError,
    ShuttingDownError,
    UndecodableMessageError,
    UnknownModelError,
    WrongTaskError,
)
from .generation import (
    BuiltPrompt,
    FailedEvent,
    FinishEvent,
    PrivatePrompt,
    RawPrompt,
    TokenEvent,
)
from .levels import LEVEL_TOLERANCE, Level, LevelChoice, choose_level
from .memo import ThreadMemo
from .metrics import Metrics, RequestStats
from .runtime import ServedModel
from .sampling import FinishReason
from .settings import Settings
from .status import end_call, internal_error, status_for

log = logging.getLogger(__name__)

BUNDLE_CHUNK_BYTES = 1 << 20
BUNDLE_CHUNK_OVERHEAD = 64  # a chunk's offset, total size and field tags
DRAIN_S = 1.0  # the longest a refused stream is read before its status goes out
MAX_REQUEST_ID_CHARS = 64  # a longer client-chosen id is replaced by the server's own
EPSILONS_KEPT = 4096  # ε of recent (mechanism, prompt length) pairs, reported without a thread
TASK_PB = {"generate": inference_pb2.TASK_GENERATE, "classify": inference_pb2.TASK_CLASSIFY}
RPC_NAMES = {"generate": "Generate", "classify": "Classify"}  # the RPC that serves each task
MODELS_KEPT = 64  # symbol models of recent mechanisms (k·2^b frequencies each), for coded frames
FINISH_REASON_PB = {
    FinishReason.LENGTH: inference_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP: inference_pb2.FINISH_REASON_STOP,
    FinishReason.EOS: inference_pb2.FINISH_REASON_EOS,
}


class StreamSlots:
    """Generate streams open at once, whether reading the prompt or generating.

    The capacity is max_running + max_waiting, what the engine holds, so an admitted stream
    finds room there (except within one engine round, while a cancelled sequence still sits
    in it: the engine then answers "server busy" itself). A stream takes its slot before
    reading anything, so clients that open streams and send nothing cannot pile up work, and
    the idle timeout hands their slots back.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.open = 0  # touched only on the event loop: no lock

    def acquire(self) -> None:
        if self.open >= self.capacity:
            raise OverloadedError(f"server busy: all {self.capacity} stream slots are taken")
        self.open += 1

    def release(self) -> None:
        self.open -= 1


class _Stream:
    """One Generate or Classify stream: the client's messages, and the counters and outcome
    the books record, filled as messages cross the wire."""

    def __init__(self, requests: AsyncIterator, max_request_s: float, task: str) -> None:
        self.requests = requests  # the client's messages, read once
        self.task = task
        self.code = "OK"  # the status it ended with, by name
        self.finish: FinishEvent | None = None  # Generate: how the generation finished
        self.epsilon: float | None = None  # exact ε of the prompt, once read (None: raw)
        self.holds_slot = False  # admitted: one of StreamSlots' slots is this stream's
        self.request_id = uuid.uuid4().hex  # the client's own once its header is read
        self.started = time.perf_counter()
        self.deadline = self.started + max_request_s
        self.request_done = False  # the End marker was read, or the client closed its side
        self.received_bytes = 0
        self.sent_bytes = 0
        self.frames = 0
        self.payload_bits = 0
        self.mechanism = "binomial"
        self.encoding = "packed"
        self.level = "none"
        self.mu: float | None = None
        self.choice: LevelChoice | None = None  # known once the header is read
        self.reading = inference_pb2.PROMPT_READING_UNSPECIFIED  # Generate: once built
        self.prompt_tokens = 0
        self.end_at: float | None = None
        self.token_times: list[float] = []
        self.answered_at: float | None = None  # Classify: when the response was ready
        self.label: str | None = None  # Classify: the label answered

    def sent(self, response: inference_pb2.GenerateResponse) -> inference_pb2.GenerateResponse:
        self.sent_bytes += wire_bytes(response)
        return response


class SplitInferenceService(inference_pb2_grpc.SplitInferenceServicer):
    def __init__(self, served: ServedModel, settings: Settings, metrics: Metrics) -> None:
        self._served = served
        self._settings = settings
        self._metrics = metrics
        self._slots = StreamSlots(settings.max_running + settings.max_waiting)
        # Building a prompt (the posterior front-end, the particle reader) runs off the event
        # loop, in threads of its own: at most `max_reading` at once, so the readers' caches
        # bound the memory a burst of long private prompts can take.
        self._builders = ThreadPoolExecutor(settings.max_reading, thread_name_prefix="del-build")
        self._draining = False
        self._epsilons: ThreadMemo[tuple[PrivacySpec, int], float] = ThreadMemo(
            lambda key: key[0].epsilon(delta=settings.report_delta, tokens=key[1]), EPSILONS_KEPT
        )
        self._models: ThreadMemo[PrivacySpec, SymbolModel] = ThreadMemo(
            lambda spec: SymbolModel.from_table(served.bundle.table, spec), MODELS_KEPT
        )
        metrics.track_streams(lambda: self._slots.open)
        self._labels = list(served.adapter.task.labels) if served.adapter.task else []

    def drain(self) -> None:
        """The server is shutting down: new streams are refused, and the streams it cuts off
        are counted, as UNAVAILABLE, which tells a client to retry (another replica)."""
        self._draining = True

    def close(self) -> None:
        """After the server stopped: queued builds are dropped and the builders' threads end
        once a build under way finishes (not waited for here)."""
        self._builders.shutdown(wait=False, cancel_futures=True)

    async def GetManifest(self, request, context) -> inference_pb2.Manifest:
        served, settings = self._served, self._settings
        reader = served.adapter.reader if served.task == "generate" else None
        info = inference_pb2.ModelInfo(
            model_id=served.loaded.model_id,
            hidden_size=served.adapter.hidden_size,
            projection_dim=served.adapter.projection_dim,
            clip=served.adapter.clip,
            supported_bits=SUPPORTED_BITS,
            soft_prompt_mus=sorted(served.adapter.soft_prompts),
            level_tolerance=LEVEL_TOLERANCE,
            bos_id=served.loaded.bos_id,
            client_bundle_digest=served.bundle.digest,
            max_prompt_tokens=settings.max_prompt_tokens,
            max_new_tokens=settings.max_new_tokens,
            raw_mechanism_enabled=served.raw_bundle is not None,
            raw_bundle_digest=served.raw_bundle.digest if served.raw_bundle else "",
            max_frames=settings.max_frames,
            max_frame_payload_bytes=settings.max_frame_bytes,
            payload_encodings=list(ENCODINGS.values()),
            privacy_levels=[
                _privacy_level(level, settings.report_delta, reader) for level in served.levels
            ],
            task=TASK_PB[served.task],
            task_name=served.adapter.task.name if served.adapter.task else "",
            labels=self._labels,
            prompt_reading=_prompt_reading(served.task, reader),
            reader_particles=reader.particles if reader else 0,
        )
        return inference_pb2.Manifest(server_version=__version__, models=[info])

    async def FetchClientBundle(self, request, context) -> AsyncIterator[inference_pb2.BundleChunk]:
        bundle = self._served.bundles.get(request.digest)
        if bundle is None:
            end_call(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "no bundle with that digest; read the current one from GetManifest",
            )
            return
        data = bundle.to_bytes()
        # Each chunk must fit the message size limit, which applies to what the server sends.
        size = min(BUNDLE_CHUNK_BYTES, self._settings.max_message_bytes - BUNDLE_CHUNK_OVERHEAD)
        for offset in range(0, len(data), size):
            yield inference_pb2.BundleChunk(
                data=data[offset : offset + size], offset=offset, total_size=len(data)
            )

    @contextlib.asynccontextmanager
    async def _stream(self, task: str, request_iterator, context) -> AsyncIterator[_Stream]:
        """One stream's life, whatever its RPC. Its body starts with `_admit` (a context
        manager cannot skip its body, and admission may refuse the stream). A DELError ends
        the stream with its status (after draining what the client still sends), a client
        that leaves is counted, anything else is INTERNAL with the request id; then the slot
        is freed, the metrics recorded and the one log line written."""
        stream = _Stream(aiter(request_iterator), self._settings.max_request_s, task)
        try:
            yield stream
        except DELError as exc:
            stream.code = status_for(exc).name
            if not stream.request_done and not isinstance(
                exc, IdleStreamError | RequestTimeoutError
            ):
                await self._drain(stream.requests)
            end_call(context, status_for(exc), str(exc))
        except (asyncio.CancelledError, GeneratorExit):
            # The client left (or its deadline passed, or the drain ran out): gRPC either
            # cancels the task while it waits, or, when the loss shows up as a failed write,
            # closes the Generate generator at its `yield` (GeneratorExit). Both are the same
            # event for the books.
            stream.code = self._cut_off_code(context)
            raise
        except Exception:
            stream.code = "INTERNAL"
            log.exception("%s failed", RPC_NAMES[task], extra={"request_id": stream.request_id})
            internal_error(context, stream.request_id)
        finally:
            if stream.holds_slot:
                self._slots.release()
            stats = self._stats(stream)
            self._metrics.record(stats)
            _log_finished(stream, stats)

    async def Generate(
        self, request_iterator, context
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        async with self._stream("generate", request_iterator, context) as stream:
            self._admit(stream)
            sampling, prompt = await self._read_prompt(stream)
            built = await self._built(prompt, stream)
            stream.level = "none" if built.level is None else f"{built.level:g}"
            stream.reading = built.reading
            handle = self._served.engine.submit(stream.request_id, built.inputs, sampling)
            # One timer for the stream's whole life, not one per message: when the stream's
            # time is up it queues the failure behind whatever the engine has sent.
            deadline = asyncio.get_running_loop().call_later(
                max(0.0, stream.deadline - time.perf_counter()),
                lambda: handle.events.put_nowait(FailedEvent(self._request_timeout())),
            )
            try:
                while True:
                    tokens, end = await self._next_events(handle, stream)
                    if tokens:
                        ids = [t.token_id for t in tokens if t.token_id is not None]
                        stream.token_times += [t.at for t in tokens if t.token_id is not None]
                        text = "".join(t.text for t in tokens)
                        chunk = inference_pb2.TokenChunk(token_ids=ids, text=text)
                        yield stream.sent(inference_pb2.GenerateResponse(tokens=chunk))
                    if isinstance(end, FinishEvent):
                        stream.finish = end
                        yield self._final(stream, end)
                        return
                    if isinstance(end, FailedEvent):
                        raise end.error
            finally:
                deadline.cancel()
                handle.cancel()

    async def _built(self, prompt: PrivatePrompt | RawPrompt, stream: _Stream) -> BuiltPrompt:
        """The prompt built off the event loop (the posterior front-end and the particle reader
        spend milliseconds to seconds on it), within the stream's time; a read whose stream is
        cancelled or out of time stops at its next position instead of holding a builder
        thread to the end."""
        abandon = threading.Event()
        build = functools.partial(self._served.prompts.build, prompt, abandon)
        try:
            async with asyncio.timeout(stream.deadline - time.perf_counter()):
                return await asyncio.get_running_loop().run_in_executor(self._builders, build)
        except TimeoutError:
            raise self._request_timeout() from None
        finally:
            abandon.set()  # no longer wanted, however the wait ended

    async def Classify(self, request_iterator, context) -> inference_pb2.ClassifyResponse:
        async with self._stream("classify", request_iterator, context) as stream:
            self._admit(stream)
            _, prompt = await self._read_prompt(stream)
            mu = getattr(prompt, "mu", None)  # a raw prompt has no level
            stream.level = "none" if mu is None else f"{mu:g}"
            left_s = stream.deadline - time.perf_counter()
            try:
                async with asyncio.timeout(left_s):
                    probabilities = await self._served.classifier.classify(
                        self._encoder_input(prompt)
                    )
            except TimeoutError:
                raise self._request_timeout() from None
            return self._classified(stream, probabilities)

    def _admit(self, stream: _Stream) -> None:
        """A slot for the stream, before anything is read; or refuse a stream the server will
        not serve (shutting down, the other task's RPC, every slot taken)."""
        if self._draining:
            raise ShuttingDownError("the server is shutting down: retry")
        served = self._served.task
        if stream.task != served:
            what = {"generate": "generates text", "classify": "classifies"}
            raise WrongTaskError(
                f"this server {what[served]} ({self._served.loaded.model_id}): call "
                f"{RPC_NAMES[served]}, not {RPC_NAMES[stream.task]} (the manifest's task "
                "says which)"
            )
        self._slots.acquire()
        stream.holds_slot = True

    def _encoder_input(self, prompt: PrivatePrompt | RawPrompt) -> EncoderInput:
        """What the classifier reads: the body, its level's soft prompt and head."""
        adapter = self._served.adapter
        if isinstance(prompt, RawPrompt):
            return EncoderInput(torch.from_numpy(prompt.embeddings), None, adapter.task.clean_head)
        x_hat = torch.from_numpy(prompt.x_hat)
        return EncoderInput(
            adapter.deproject(x_hat),
            adapter.soft_prompts.get(prompt.mu),
            adapter.task.heads[prompt.mu],
            x_hat,
        )

    def _classified(
        self, stream: _Stream, probabilities: list[float]
    ) -> inference_pb2.ClassifyResponse:
        stream.answered_at = time.perf_counter()
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        choice = stream.choice
        response = inference_pb2.ClassifyResponse(
            label=self._labels[best],
            probabilities=[
                inference_pb2.LabelProbability(label=label, probability=p)
                for label, p in zip(self._labels, probabilities, strict=True)
            ],
            usage=self._usage(stream, generated_tokens=0),
            timings=inference_pb2.Timings(
                time_to_first_token_s=stream.answered_at - stream.end_at,
                total_s=stream.answered_at - stream.started,
            ),
            level_id=choice.level_id,
            soft_prompt=choice.soft_prompt,
            epsilon=stream.epsilon or 0.0,
            delta=self._settings.report_delta,
        )
        stream.sent_bytes += wire_bytes(response)
        stream.label = self._labels[best]
        return response

    def _cut_off_code(self, context) -> str:
        """Why a stream ended without its final message, as a status name."""
        if _deadline_passed(context):
            return "DEADLINE_EXCEEDED"
        return "UNAVAILABLE" if self._draining else "CANCELLED"

    async def _drain(self, requests) -> None:
        """Read, and drop, what the client is still sending, before refusing its stream.

        gRPC's asyncio client reports INTERNAL ("Internal error from Core", grpc/grpc#36066)
        in place of the server's status when that status arrives while it is still writing.
        Reading the rest of a client's request first lets the real status through; it is
        bounded by max_frames + 2 messages and DRAIN_S seconds, and nothing read is used.
        Timeouts are not drained: the client is not writing then.
        """
        try:
            async with asyncio.timeout(min(DRAIN_S, self._settings.idle_timeout_s)):
                for _ in range(self._settings.max_frames + 2):
                    message = await anext(requests, None)
                    if message is None or message.WhichOneof("kind") == "end":
                        return
        except (TimeoutError, DecodeError):
            return

    async def _receive(self, stream: _Stream):
        """The client's next message (None once it closed its side), waited for a bounded time."""
        idle_s = self._settings.idle_timeout_s
        left_s = stream.deadline - time.perf_counter()
        try:
            async with asyncio.timeout(min(idle_s, left_s)):
                message = await anext(stream.requests, None)
        except TimeoutError:
            if left_s <= idle_s:
                raise self._request_timeout() from None
            raise IdleStreamError(
                f"no message from the client for {idle_s:g} s before its end marker: "
                "the stream was closed and its slot freed"
            ) from None
        except DecodeError:
            raise UndecodableMessageError(
                "a message is not a valid del.v1.GenerateRequest protobuf"
            ) from None
        if message is None:
            stream.request_done = True
            if self._draining:  # the shutdown, not the client, closed the stream early
                raise ShuttingDownError("the server shut down before the request was read: retry")
        else:
            stream.received_bytes += wire_bytes(message)
        return message

    async def _next_events(
        self, handle, stream: _Stream
    ) -> tuple[list[TokenEvent], FinishEvent | FailedEvent | None]:
        """Every token the engine has ready for this stream (at least one event; the stream's
        deadline timer sends a failure when its time is up) and the event that ends it, if
        that came too.

        One message carries all the tokens ready: a client that keeps up gets each token as
        it is made, and one that falls behind (or a busy server) gets fewer, larger messages.
        """
        event = await handle.events.get()
        tokens = []
        while isinstance(event, TokenEvent):
            tokens.append(event)
            if handle.events.empty():
                return tokens, None
            event = handle.events.get_nowait()
        return tokens, event

    def _request_timeout(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the stream ran past the server's limit of {self._settings.max_request_s:g} s "
            "per request"
        )

    async def _read_prompt(self, stream: _Stream):
        """Header, frames, End -> (sampling, prompt for the engine); the prompt's ε (None for
        raw) goes to `stream.epsilon`.

        The header is checked in full before any frame is read, so a request that would be
        refused anyway is refused before its prompt is decoded.
        """
        first = await self._receive(stream)
        if first is None or first.WhichOneof("kind") != "header":
            raise FrameError("the stream must start with a header")
        header = first.header
        stream.request_id = _request_id(header) or stream.request_id
        spec = self._check_header(header)
        stream.encoding = payload_encoding(header.mechanism)
        stream.choice = choose_level(self._served.levels, header.level_id, spec)
        if stream.task == "classify":
            self._check_classifiable(stream.choice)
        sampling = self._sampling(header.sampling) if stream.task == "generate" else None
        stream.mechanism = "raw" if isinstance(spec, RawSpec) else "binomial"
        limits = self._settings
        assembler = FrameAssembler(
            spec,
            max_tokens=limits.max_prompt_tokens,
            max_frames=limits.max_frames,
            max_payload_bytes=limits.max_frame_bytes,
            model=await self.symbol_model(spec) if stream.encoding == "ans" else None,
        )
        while (message := await self._receive(stream)) is not None:
            kind = message.WhichOneof("kind")
            if kind == "frame":
                assembler.add(message.frame)
                stream.frames += 1
            elif kind == "end":
                stream.request_done = True
                break
            else:
                raise FrameError(f"expected a frame or the end marker, got {kind or 'nothing'}")
        else:
            raise FrameError("the stream closed before its end marker")
        stream.end_at = time.perf_counter()
        if assembler.tokens == 0:
            raise FrameError("the prompt has no tokens")
        stream.prompt_tokens = assembler.tokens
        stream.payload_bits = assembler.payload_bits
        if isinstance(spec, RawSpec):
            embeddings = assembler.embeddings()
            self._refuse_bos(embeddings)
            return sampling, RawPrompt(embeddings)
        stream.mu = spec.mu()
        stream.epsilon = await self._epsilons.get((spec, assembler.tokens))
        mu = stream.choice.soft_prompt_mu if stream.task == "generate" else stream.choice.level.mu
        return sampling, PrivatePrompt(assembler.symbols(), spec, mu=mu)

    def _check_classifiable(self, choice: LevelChoice) -> None:
        """A private prompt is classified by the head of its level, trained for its noise: a
        request at parameters of no level, or of a level without a head, is refused."""
        task = self._served.adapter.task
        if choice.soft_prompt == inference_pb2.SOFT_PROMPT_RAW:
            if task.clean_head is None:
                raise MechanismDisabledError("this adapter has no head for raw (clean) inputs")
            return
        if choice.level is None or choice.level.mu not in task.heads:
            offered = [level.id for level in self._served.levels if level.mu in task.heads]
            raise FrameError(
                "classification is served at the manifest's levels only, each with a head "
                f"trained for its noise (offered: {', '.join(offered) or 'none'}): send one "
                "of them (level_id and its parameters)"
            )

    async def symbol_model(self, spec: PrivacySpec) -> SymbolModel:
        """The model coded frames at `spec` are coded with: computed once, in a thread."""
        return await self._models.get(spec)

    def _refuse_bos(self, embeddings) -> None:
        """The server prepends BOS: raw frames that start with its embedding would put two."""
        raw, bos = self._served.raw_bundle, self._served.loaded.bos_id
        if bos is not None and (embeddings[0] == raw.table[bos]).all():
            raise FrameError(
                f"the frames start with the BOS token ({bos}): the server prepends BOS itself, "
                "so send only the prompt's tokens after it (docs/PROTOCOL.md, BOS)"
            )

    def _check_header(self, header: inference_pb2.StreamHeader):
        served = self._served
        if header.model and header.model != served.loaded.model_id:
            raise UnknownModelError(
                f"this server serves {served.loaded.model_id!r}, not {header.model!r}"
            )
        spec = spec_from_params(header.mechanism)
        if isinstance(spec, RawSpec):
            if served.raw_bundle is None:
                raise MechanismDisabledError(
                    "the raw (no privacy) mechanism is disabled on this server"
                )
            expected, dim = served.raw_bundle.digest, served.adapter.hidden_size
        else:
            expected, dim = served.bundle.digest, served.adapter.projection_dim
        if header.bundle_digest != expected:
            raise BundleMismatchError(
                f"frames were encoded with bundle {header.bundle_digest[:16]!r}…, this server "
                f"publishes {expected[:16]}…: fetch the current bundle"
            )
        if spec.dim != dim:
            raise FrameError(f"mechanism dim {spec.dim} does not match the bundle's {dim}")
        return spec

    def _sampling(self, pb: inference_pb2.SamplingParams) -> Sampling:
        limit = self._settings.max_new_tokens
        if pb.max_new_tokens > limit:
            raise LimitExceededError(
                f"max_new_tokens {pb.max_new_tokens} exceeds the limit of {limit}"
            )
        try:
            return Sampling(
                max_new_tokens=pb.max_new_tokens or self._settings.default_new_tokens,
                temperature=pb.temperature,
                top_p=pb.top_p or 1.0,
                top_k=pb.top_k,
                seed=pb.seed if pb.HasField("seed") else None,
                stop=tuple(pb.stop),
            )
        except RequestOptionError as exc:
            raise FrameError(f"invalid sampling parameters: {exc}") from exc

    def _usage(self, stream: _Stream, *, generated_tokens: int) -> inference_pb2.Usage:
        return inference_pb2.Usage(
            prompt_tokens=stream.prompt_tokens,
            generated_tokens=generated_tokens,
            wire_bytes_received=stream.received_bytes,
            wire_bytes_sent=stream.sent_bytes,
            payload_bits=stream.payload_bits,
            bits_per_token=stream.payload_bits / stream.prompt_tokens,
        )

    def _final(self, stream: _Stream, event: FinishEvent):
        usage = self._usage(stream, generated_tokens=event.generated_tokens)
        first = stream.token_times[0] - stream.end_at if stream.token_times else 0.0
        timings = inference_pb2.Timings(
            time_to_first_token_s=first, total_s=time.perf_counter() - stream.started
        )
        choice = stream.choice
        # The particle reader prepends its own prefix, never the level's soft prompt.
        read = stream.reading in (
            inference_pb2.PROMPT_READING_PARTICLE,
            inference_pb2.PROMPT_READING_IGNORED,
        )
        final = inference_pb2.Final(
            finish_reason=FINISH_REASON_PB[event.reason],
            usage=usage,
            timings=timings,
            soft_prompt_mu=None if read else choice.soft_prompt_mu,
            level_id=choice.level_id,
            soft_prompt=inference_pb2.SOFT_PROMPT_READER if read else choice.soft_prompt,
            reading=stream.reading,
        )
        return stream.sent(inference_pb2.GenerateResponse(final=final))

    def _stats(self, stream: _Stream) -> RequestStats:
        times, finish = stream.token_times, stream.finish
        return RequestStats(
            code=stream.code,
            mechanism=stream.mechanism,
            encoding=stream.encoding,
            level=stream.level,
            finish_reason=finish.reason if finish else None,
            prompt_tokens=stream.prompt_tokens,
            generated_tokens=finish.generated_tokens if finish else 0,
            frames=stream.frames,
            wire_received_bytes=stream.received_bytes,
            wire_sent_bytes=stream.sent_bytes,
            payload_bits=stream.payload_bits,
            label=stream.label,
            raw_bits_per_token=16 * self._served.adapter.hidden_size,
            time_to_first_token_s=times[0] - stream.end_at if times else None,
            inter_token_latencies_s=tuple(b - a for a, b in itertools.pairwise(times)),
            e2e_latency_s=(
                time.perf_counter() - stream.started if finish or stream.label else None
            ),
            epsilon_prompt=stream.epsilon,
        )


def _prompt_reading(task: str, reader: ParticleReading | None) -> int:
    """How the manifest says this server reads a private prompt (a classifier: unspecified)."""
    if task != "generate":
        return inference_pb2.PROMPT_READING_UNSPECIFIED
    if reader is None:
        return inference_pb2.PROMPT_READING_FRONT_END
    return inference_pb2.PROMPT_READING_PARTICLE


def _privacy_level(
    served: Level, delta: float, reader: ParticleReading | None
) -> inference_pb2.PrivacyLevel:
    """A level as the manifest publishes it: its parameters, how often a particle reader leaves
    its prompts unread, and what measured it (a level nobody calibrated, a soft prompt's, gets
    its exact ε at the server's report δ)."""
    spec = served.spec
    parameters = inference_pb2.PrivacyLevel(
        id=served.id,
        mu=served.mu,
        bits=spec.bits,
        dim=spec.dim,
        clip=spec.clip,
        scale=spec.scale,
        soft_prompt=served.soft_prompt,
        ignore_probability=reader.ignore_prompt.get(served.mu, 0.0) if reader else 0.0,
    )
    level = served.calibration
    if level is None:
        parameters.delta, parameters.epsilon_token = delta, spec.epsilon(delta=delta)
        return parameters
    attacks = level.attacks

    def rate(attack: str, unmeasured: float | None = 0.0) -> float | None:
        return attacks[attack].rate if attack in attacks else unmeasured

    measured = inference_pb2.PrivacyLevel(
        epsilon_token=level.epsilon_token,
        delta=level.delta,
        target_attack_rate=level.target_attack_rate,
        nearest_neighbour_rate=rate("nearest_neighbour"),
        likelihood_rate=rate("likelihood"),
        learned_rate=rate("learned", None),
        attack="all",
        attacks=[_attack_rate(name, result) for name, result in attacks.items()],
        strongest_attack=level.strongest_attack,
        strongest_rate=level.strongest.rate,
        strongest_rate_high=level.strongest.high,
        prior_alone_rate=level.prior_alone_rate,
        measured_on=level.measured_on,
        measured_tokens=level.tokens,
        measured_prompts=level.prompts,
        utility=_level_utility(level.utility) if level.utility is not None else None,
    )
    parameters.MergeFrom(measured)
    return parameters


def _attack_rate(name: str, result: Recovery) -> inference_pb2.AttackRate:
    """What AttackRate carries of an attack's recovery (not its token and prompt counts)."""
    return inference_pb2.AttackRate(
        attack=name,
        rate=result.rate,
        low=result.low,
        high=result.high,
        content_rate=result.content_rate,
        half_prompts=result.half_prompts,
        exact_prompts=result.exact_prompts,
    )


def _level_utility(utility: MeasuredUtility) -> inference_pb2.LevelUtility:
    """The adapter's utility record, with the verdict computed here so clients need not."""
    return inference_pb2.LevelUtility(
        metric=utility.metric,
        value=utility.value,
        nothing_sent=utility.nothing_sent,
        higher_is_better=utility.higher_is_better,
        measured_on=utility.measured_on,
        better_than_nothing=utility.better_than_nothing,
        margin=utility.margin,
    )


def _request_id(header: inference_pb2.StreamHeader) -> str | None:
    """The client's id for its request, if it is short and printable: it goes to the log."""
    chosen = header.request_id
    return chosen if 0 < len(chosen) <= MAX_REQUEST_ID_CHARS and chosen.isprintable() else None


def _log_finished(stream: _Stream, stats: RequestStats) -> None:
    """The request's one log line: ids, sizes and timings, never prompts, symbols or text."""
    log.info(
        "request finished",
        extra={
            "request_id": stream.request_id,
            "task": stream.task,
            "status": stats.code,
            "mechanism": stats.mechanism,
            "payload_encoding": stats.encoding,
            "privacy_level": stats.level,  # not "level": that key is the line's log level
            "level_id": stream.choice.level_id if stream.choice else None,
            "mu": stream.mu,
            "finish_reason": stats.finish_reason,
            "prompt_tokens": stats.prompt_tokens,
            "generated_tokens": stats.generated_tokens,
            "frames": stats.frames,
            "wire_received_bytes": stats.wire_received_bytes,
            "wire_sent_bytes": stats.wire_sent_bytes,
            "time_to_first_token_s": stats.time_to_first_token_s,
            "total_s": time.perf_counter() - stream.started,
        },
    )


def _deadline_passed(context) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0
