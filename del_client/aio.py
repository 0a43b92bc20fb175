"""The asyncio client: session.py's messages over a grpc.aio stub, nothing more.

Same names as the blocking client (client.py); coroutines where bytes move, `aclose` where
the blocking client has `close`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from .bundle import ClientBundle
from .config import ClientConfig
from .proto import inference_pb2, inference_pb2_grpc
from .session import (
    BaseClient,
    BaseGeneration,
    BundleDownload,
    GenerationPlan,
    GenerationResult,
    Manifest,
    ModelInfo,
    PreparedRequest,
    ReplyFolder,
)
from .status import raising_server_errors


class AsyncGeneration(BaseGeneration):
    """Text deltas as the server streams them; `.result` once the stream is read to its end.

        async with client.generate("Once upon a time", mu=10) as generation:
            async for delta in generation:
                print(delta, end="", flush=True)
        print(generation.result.epsilon_prompt)

    Nothing is sent before iteration starts. Stopping early (aclose(), leaving the `async
    with` block, or a break once the event loop finalizes the iterator) cancels the call.
    """

    def __init__(
        self,
        stub: inference_pb2_grpc.SplitInferenceStub,
        deadline_s: float,
        prepare: Callable[[], Awaitable[PreparedRequest]],
    ) -> None:
        super().__init__(prepare)
        self._stub = stub
        self._deadline_s = deadline_s
        self._call: grpc.aio.StreamStreamCall | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        self._begin()
        request = await self._prepare()
        reply = ReplyFolder(request)
        with raising_server_errors():
            self._call = self._stub.Generate(iter(request.messages), timeout=self._deadline_s)
            try:
                async for response in self._call:
                    if delta := reply.feed(response):
                        yield delta
            finally:
                self._stopped = self._call.cancel()  # True only if it was still running
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


class AsyncClient(BaseClient[AsyncGeneration]):
    """DEL's asyncio client; create it inside a running event loop.

        async with AsyncClient(ClientConfig("localhost:50051")) as client:
            result = await client.generate("Once upon a time", mu=10).collect()

    Server-side failures raise ServerError subclasses carrying the server's message.
    """

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self._channel = grpc.aio.insecure_channel(config.target)
        self._stub = inference_pb2_grpc.SplitInferenceStub(self._channel)

    async def manifest(self) -> Manifest:
        """Ask the server what it serves; later calls use this answer until asked again."""
        with raising_server_errors():
            pb = await self._stub.GetManifest(
                inference_pb2.GetManifestRequest(), timeout=self.config.deadline_s
            )
        self._manifest = Manifest.from_pb(pb)
        return self._manifest

    async def bundle(self, mechanism: str = "binomial") -> ClientBundle:
        """The verified bundle the manifest names for `mechanism`: cached, else fetched."""
        download = BundleDownload((await self._model()).bundle_digest(mechanism))
        cached = self._cache.get(download.request.digest)
        if cached is not None:
            return cached
        with raising_server_errors():
            async for chunk in self._stub.FetchClientBundle(
                download.request, timeout=self.config.deadline_s
            ):
                download.feed(chunk)
        return self._cache.put(download.bundle())

    def send(self, request: PreparedRequest) -> AsyncGeneration:
        """Stream a request prepared earlier; sending the same one again spends no privacy."""

        async def prepared() -> PreparedRequest:
            return request

        return AsyncGeneration(self._stub, self.config.deadline_s, prepared)

    async def aclose(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def _model(self) -> ModelInfo:
        return (self._manifest or await self.manifest()).model

    def _generation(self, plan: GenerationPlan) -> AsyncGeneration:
        async def prepare() -> PreparedRequest:
            model = await self._model()
            return self._prepare(plan, model, await self.bundle(plan.privacy.mechanism))

        return AsyncGeneration(self._stub, self.config.deadline_s, prepare)
