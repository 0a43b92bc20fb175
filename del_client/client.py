"""The synchronous client: the sans-I/O core (session.py) over a blocking gRPC stub."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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


class Generation(BaseGeneration):
    """Text deltas as the server streams them; `.result` once the stream is read to its end.

        generation = client.generate("Once upon a time", mu=10)
        for delta in generation:
            print(delta, end="", flush=True)
        print(generation.result.epsilon_prompt)

    Nothing is sent before iteration starts. Stopping early (break, close(), leaving a `with`
    block) cancels the call, and the server stops generating. UNAVAILABLE before the first
    reply sends the same frames again (retry.py); the budget was charged once, in prepare.
    """

    def __init__(
        self,
        stub: inference_pb2_grpc.SplitInferenceStub,
        config: ClientConfig,
        prepare: Callable[[], PreparedRequest],
    ) -> None:
        super().__init__(prepare)
        self._stub = stub
        self._config = config
        self._call: grpc.Future | None = None

    def __iter__(self) -> Iterator[str]:
        self._begin()
        request = self._prepare()  # privatized and charged once, however many attempts follow
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
                    for response in self._call:
                        if delta := reply.feed(response):
                            yield delta
                    break
                except grpc.RpcError as exc:
                    if (delay := attempts.after(exc, replied=reply.replied)) is None:
                        raise
                finally:
                    self._stopped = self._call.cancel()  # True only if it was still running
                time.sleep(delay)
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


class Client(BaseClient[Generation, ClassificationResult]):
    """DEL's blocking client. One channel; thread-safe like the gRPC channel under it.

        with Client(ClientConfig("localhost:50051")) as client:
            result = client.generate("Once upon a time", mu=10, max_new_tokens=32).collect()
            # a server whose model classifies:
            label = client.classify("a charming and often affecting journey").label

    Server-side failures raise ServerError subclasses carrying the server's message.
    """

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self._channel = open_channel(config, grpc)
        self._stub = inference_pb2_grpc.SplitInferenceStub(self._channel)
        self._metadata = call_metadata(config)

    def manifest(self) -> Manifest:
        """Ask the server what it serves; later calls use this answer until asked again."""
        pb = self._retrying(
            lambda timeout: self._stub.GetManifest(
                inference_pb2.GetManifestRequest(), timeout=timeout, metadata=self._metadata
            )
        )
        self._manifest = Manifest.from_pb(pb)
        return self._manifest

    def bundle(self, mechanism: str = "binomial") -> ClientBundle:
        """The verified bundle the manifest names for `mechanism`: cached, else fetched."""
        digest = self._model().bundle_digest(mechanism)
        cached = self._cache.get(digest)
        if cached is not None:
            return cached

        def fetch(timeout: float) -> BundleDownload:
            download = BundleDownload(digest)  # a retry starts the download over
            for chunk in self._stub.FetchClientBundle(
                download.request, timeout=timeout, metadata=self._metadata
            ):
                download.feed(chunk)
            return download

        return self._cache.put(self._retrying(fetch).bundle())

    def send(self, request: PreparedRequest) -> Generation:
        """Stream a request prepared earlier; sending the same one again spends no privacy."""
        return Generation(self._stub, self.config, lambda: request)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _model(self) -> ModelInfo:
        return (self._manifest or self.manifest()).model

    def _retrying(self, call: Callable[[float], T]) -> T:
        """call(timeout), again after UNAVAILABLE as retry.py allows (it must be idempotent)."""
        attempts = Attempts.start(self.config)
        with raising_server_errors():
            while True:
                try:
                    return call(attempts.timeout())
                except grpc.RpcError as exc:
                    if (delay := attempts.after(exc, replied=False)) is None:
                        raise
                time.sleep(delay)

    def _generation(self, plan: PromptPlan) -> Generation:
        def prepare() -> PreparedRequest:
            return self._prepare(plan, self._model(), self.bundle(plan.privacy.mechanism))

        return Generation(self._stub, self.config, prepare)

    def _classification(self, plan: PromptPlan) -> ClassificationResult:
        request = self._prepare(plan, self._model(), self.bundle(plan.privacy.mechanism))
        response = self._retrying(
            lambda timeout: self._stub.Classify(
                iter(request.messages), timeout=timeout, metadata=self._metadata
            )
        )
        return classification_result(request, response)
