"""The asyncio client: the sans-I/O core (session.py) over a grpc.aio stub, nothing more.

Same names as the blocking client (client.py); coroutines where bytes move, `aclose` where
the blocking client has `close`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from .bundle import ClientBundle
from .classification import ClassificationResult, classification_result
from .config import ClientConfig
from .manifest import BundleDownload, Manifest, ModelInfo
from .proto import inference_pb2, inference_pb2_grpc
from .request import PreparedRequest, PromptPlan
from .results import GenerationResult, ReplyFolder
from .retry import Attempts
from .session import BaseClient, BaseGeneration
from .status import raising_server_errors
from .transport import call_metadata, open_channel

T = TypeVar("T")


class AsyncGeneration(BaseGeneration):
    """Text deltas as the server streams them; `.result` once the stream is read to its end.

        async with client.generate("Once upon a time", mu=10) as generation:
            async for delta in generation:
                print(delta, end="", flush=True)
        print(generation.result.epsilon_prompt)

    Nothing is sent before iteration starts. Stopping early (aclose(), leaving the `async
    with` block, or a break once the event loop finalizes the iterator) cancels the call.
    UNAVAILABLE before the first reply sends the same frames again (retry.py).
    """

    def __init__(
        self,
        stub: inference_pb2_grpc.SplitInferenceStub,
        config: ClientConfig,
        prepare: Callable[[], Awaitable[PreparedRequest]],
    ) -> None:
        super().__init__(prepare)
        self._stub = stub
        self._config = config
        self._call: grpc.aio.StreamStreamCall | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        self._begin()
        request = await self._prepare()  # privatized and charged once, however many attempts
        reply = ReplyFolder(request)
        attempts = Attempts.start(self._config)
        with raising_server_errors():
            while True:
                self._call = self._stub.Generate(
                    iter(request.messages),
                    timeout=attempts.timeout(),
                    metadata=call_metadata(self._config),
                )
                try:
                    async for response in self._call:
                        if delta := reply.feed(response):
                            yield delta
                    break
                except grpc.RpcError as exc:
                    if (delay := attempts.after(exc, replied=reply.replied)) is None:
                        raise
                finally:
                    self._stopped = self._call.cancel()  # True only if it was still running
                await asyncio.sleep(delay)
        self._result = reply.result()

    async def collect(self) -> GenerationResult:
        """Read the whole stream (if not read yet) and return the result."""
        if self._result is None:
            async for _ in self:
                pass
        return self.result

    async def aclose(self) -> None:
        """Cancel the call if it is still running."""
        if self._call is not None:
            self._stopped = self._call.cancel() or self._stopped

    async def __aenter__(self) -> AsyncGeneration:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()


class AsyncClient(BaseClient[AsyncGeneration, Awaitable[ClassificationResult]]):
    """DEL's asyncio client; create it inside a running event loop.

        async with AsyncClient(ClientConfig("localhost:50051")) as client:
            result = await client.generate("Once upon a time", mu=10).collect()
            # a server whose model classifies:
            label = (await client.classify("a charming and often affecting journey")).label

    Server-side failures raise ServerError subclasses carrying the server's message.
    """

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self._channel = open_channel(config, grpc.aio)
        self._stub = inference_pb2_grpc.SplitInferenceStub(self._channel)
        self._metadata = call_metadata(config)

    async def manifest(self) -> Manifest:
        """Ask the server what it serves; later calls use this answer until asked again."""
        pb = await self._retrying(
            lambda timeout: self._stub.GetManifest(
                inference_pb2.GetManifestRequest(), timeout=timeout, metadata=self._metadata
            )
        )
        self._manifest = Manifest.from_pb(pb)
        return self._manifest

    async def bundle(self, mechanism: str = "binomial") -> ClientBundle:
        """The verified bundle the manifest names for `mechanism`: cached, else fetched."""
        digest = (await self._model()).bundle_digest(mechanism)
        cached = self._cache.get(digest)
        if cached is not None:
            return cached

        async def fetch(timeout: float) -> BundleDownload:
            download = BundleDownload(digest)  # a retry starts the download over
            async for chunk in self._stub.FetchClientBundle(
                download.request, timeout=timeout, metadata=self._metadata
            ):
                download.feed(chunk)
            return download

        return self._cache.put((await self._retrying(fetch)).bundle())

    def send(self, request: PreparedRequest) -> AsyncGeneration:
        """Stream a request prepared earlier; sending the same one again spends no privacy."""

        async def prepared() -> PreparedRequest:
            return request

        return AsyncGeneration(self._stub, self.config, prepared)

    async def aclose(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def _model(self) -> ModelInfo:
        return (self._manifest or await self.manifest()).model

    async def _retrying(self, call: Callable[[float], Awaitable[T]]) -> T:
        """call(timeout), again after UNAVAILABLE as retry.py allows (it must be idempotent)."""
        attempts = Attempts.start(self.config)
        with raising_server_errors():
            while True:
                try:
                    return await call(attempts.timeout())
                except grpc.RpcError as exc:
                    if (delay := attempts.after(exc, replied=False)) is None:
                        raise
                await asyncio.sleep(delay)

    def _generation(self, plan: PromptPlan) -> AsyncGeneration:
        async def prepare() -> PreparedRequest:
            model = await self._model()
            return self._prepare(plan, model, await self.bundle(plan.privacy.mechanism))

        return AsyncGeneration(self._stub, self.config, prepare)

    async def _classification(self, plan: PromptPlan) -> ClassificationResult:
        model = await self._model()
        request = self._prepare(plan, model, await self.bundle(plan.privacy.mechanism))
        response = await self._retrying(
            lambda timeout: self._stub.Classify(
                iter(request.messages), timeout=timeout, metadata=self._metadata
            )
        )
        return classification_result(request, response)
