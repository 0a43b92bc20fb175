"""The synchronous client: session.py's messages over a blocking gRPC stub, nothing more."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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


class Generation(BaseGeneration):
    """Text deltas as the server streams them; `.result` once the stream is read to its end.

        generation = client.generate("Once upon a time", mu=10)
        for delta in generation:
            print(delta, end="", flush=True)
        print(generation.result.epsilon_prompt)

    Nothing is sent before iteration starts. Stopping early (break, close(), leaving a `with`
    block) cancels the call, and the server stops generating.
    """

    def __init__(
        self,
        stub: inference_pb2_grpc.SplitInferenceStub,
        deadline_s: float,
        prepare: Callable[[], PreparedRequest],
    ) -> None:
        super().__init__(prepare)
        self._stub = stub
        self._deadline_s = deadline_s
        self._call: grpc.Future | None = None

    def __iter__(self) -> Iterator[str]:
        self._begin()
        request = self._prepare()
        reply = ReplyFolder(request)
        with raising_server_errors():
            self._call = self._stub.Generate(iter(request.messages), timeout=self._deadline_s)
            try:
                for response in self._call:
                    if delta := reply.feed(response):
                        yield delta
            finally:
                self._stopped = self._call.cancel()  # True only if it was still running
        self._result = reply.result()

    def collect(self) -> GenerationResult:
        """Read the whole stream (if not read yet) and return the result."""
        if self._result is None:
            for _ in self:
                pass
        return self.result

    def close(self) -> None:
        """Cancel the call if it is still running."""
        if self._call is not None:
            self._stopped = self._call.cancel() or self._stopped

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Client(BaseClient[Generation]):
    """DEL's blocking client. One channel; thread-safe like the gRPC channel under it.

        with Client(ClientConfig("localhost:50051")) as client:
            result = client.generate("Once upon a time", mu=10, max_new_tokens=32).collect()

    Server-side failures raise ServerError subclasses carrying the server's message.
    """

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self._channel = grpc.insecure_channel(config.target)
        self._stub = inference_pb2_grpc.SplitInferenceStub(self._channel)

    def manifest(self) -> Manifest:
        """Ask the server what it serves; later calls use this answer until asked again."""
        with raising_server_errors():
            pb = self._stub.GetManifest(
                inference_pb2.GetManifestRequest(), timeout=self.config.deadline_s
            )
        self._manifest = Manifest.from_pb(pb)
        return self._manifest

    def bundle(self, mechanism: str = "binomial") -> ClientBundle:
        """The verified bundle the manifest names for `mechanism`: cached, else fetched."""
        download = BundleDownload(self._model().bundle_digest(mechanism))
        cached = self._cache.get(download.request.digest)
        if cached is not None:
            return cached
        with raising_server_errors():
            for chunk in self._stub.FetchClientBundle(
                download.request, timeout=self.config.deadline_s
            ):
                download.feed(chunk)
        return self._cache.put(download.bundle())

    def send(self, request: PreparedRequest) -> Generation:
        """Stream a request prepared earlier; sending the same one again spends no privacy."""
        return Generation(self._stub, self.config.deadline_s, lambda: request)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _model(self) -> ModelInfo:
        return (self._manifest or self.manifest()).model

    def _generation(self, plan: GenerationPlan) -> Generation:
        def prepare() -> PreparedRequest:
            return self._prepare(plan, self._model(), self.bundle(plan.privacy.mechanism))

        return Generation(self._stub, self.config.deadline_s, prepare)
