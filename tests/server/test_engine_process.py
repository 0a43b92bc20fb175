"""--engine-process: the engine in a child process gives the same tokens as in the server's
own, through the same gRPC contract; cancels, overload and stop reach it; if it dies, open
streams fail, new ones are refused and health turns NOT_SERVING."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from del_client.bundle import ClientBundle
from del_client.codec import encode_frames, mechanism_params
from del_client.mechanism import BinomialQuantizer, PrivacySpec
from del_client.proto import inference_pb2, inference_pb2_grpc
from del_client.randomness import seeded_generator_for_tests
from del_server.settings import Settings

END = inference_pb2.GenerateRequest(end=inference_pb2.End())


def settings(stories260k, **overrides) -> Settings:
    return Settings(
        model=str(stories260k),
        port=0,
        metrics_port=-1,
        max_running=4,
        max_waiting=4,
        max_new_tokens=64,
        grace_s=2.0,
        **overrides,
    )


@pytest.fixture(scope="module")
def separate(serve, stories260k):
    with serve(settings(stories260k, engine_process=True)) as loopback:
        yield loopback


@pytest.fixture(scope="module")
def together(serve, stories260k):
    with serve(settings(stories260k)) as loopback:
        yield loopback


class Wire:
    """Raw stubs and the bundle of one server."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = inference_pb2_grpc.SplitInferenceStub(self.channel)
        model = self.stub.GetManifest(inference_pb2.GetManifestRequest()).models[0]
        chunks = self.stub.FetchClientBundle(
            inference_pb2.FetchClientBundleRequest(digest=model.client_bundle_digest)
        )
        self.bundle = ClientBundle.from_bytes(b"".join(c.data for c in chunks))
        self.spec = PrivacySpec.from_mu(
            mu=50.0, dim=self.bundle.projection_dim, bits=4, clip=self.bundle.clip
        )

    def request(self, text: str, **sampling) -> list[inference_pb2.GenerateRequest]:
        symbols = BinomialQuantizer(self.spec, rng=seeded_generator_for_tests(0)).privatize(
            self.bundle.embed(self.bundle.encode(text)[1:])
        )
        header = inference_pb2.StreamHeader(
            mechanism=mechanism_params(self.spec),
            bundle_digest=self.bundle.digest,
            sampling=inference_pb2.SamplingParams(**{"max_new_tokens": 16, **sampling}),
        )
        frames = [inference_pb2.GenerateRequest(frame=f) for f in encode_frames(symbols, self.spec)]
        return [inference_pb2.GenerateRequest(header=header), *frames, END]

    def ids(self, text: str, **sampling) -> list[int]:
        replies = list(self.stub.Generate(iter(self.request(text, **sampling))))
        assert replies[-1].WhichOneof("kind") == "final"
        return [i for r in replies[:-1] for i in r.tokens.token_ids]


TEXTS = ["Once upon a time", "The cat sat", "Tom and Lily went to the park to play ball"]


def test_the_engine_process_generates_what_the_servers_own_engine_does(separate, together):
    apart, inside = Wire(separate.target), Wire(together.target)
    assert os.getpid() != separate.running.served.engine.pid
    for text in TEXTS:
        assert apart.ids(text, temperature=0.0) == inside.ids(text, temperature=0.0)
        seeded = {"temperature": 0.9, "top_p": 0.9, "top_k": 40, "seed": 5}
        assert apart.ids(text, **seeded) == inside.ids(text, **seeded)
    with concurrent.futures.ThreadPoolExecutor(len(TEXTS)) as pool:
        batched = list(pool.map(lambda t: apart.ids(t, temperature=0.0), TEXTS))
    assert batched == [inside.ids(t, temperature=0.0) for t in TEXTS]


def test_a_cancel_reaches_the_engine_process_and_overload_is_refused(separate):
    wire, engine = Wire(separate.target), separate.running.served.engine
    call = wire.stub.Generate(iter(wire.request("Once upon a time", max_new_tokens=64)))
    next(call)
    call.cancel()
    deadline = time.monotonic() + 20
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.running == 0
    calls = [
        wire.stub.Generate(iter(wire.request("The cat sat", max_new_tokens=64)))
        for _ in range(8 + 1)  # max_running + max_waiting, and one more
    ]
    codes = []
    for call in calls:
        try:
            list(call)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 1
    assert codes.count(grpc.StatusCode.OK) == 8


def test_after_a_cancel_with_nothing_left_to_send_the_server_sees_the_engine_idle(
    serve, stories260k
):
    """Every token sent as made (no stream interval): the cancelled stream has no event left
    in the engine process, yet the server learns that nothing runs there any more."""
    with serve(settings(stories260k, engine_process=True, stream_interval_ms=0.0)) as loopback:
        wire, engine = Wire(loopback.target), loopback.running.served.engine
        for attempt in range(20):  # the cancel lands at different points of the engine's round
            call = wire.stub.Generate(iter(wire.request("Once upon a time", max_new_tokens=64)))
            next(call)
            time.sleep(attempt * 0.0025)
            call.cancel()
            deadline = time.monotonic() + 5
            while (engine.running or engine.waiting) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (engine.running, engine.waiting) == (0, 0), attempt


def test_if_the_engine_process_dies_streams_fail_and_health_says_not_serving(serve, stories260k):
    with serve(settings(stories260k, engine_process=True)) as loopback:
        wire, engine = Wire(loopback.target), loopback.running.served.engine
        health = health_pb2_grpc.HealthStub(wire.channel)
        call = wire.stub.Generate(iter(wire.request("Once upon a time", max_new_tokens=64)))
        next(call)
        os.kill(engine.pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as failure:
            list(call)
        assert failure.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.RpcError) as refused:
            list(wire.stub.Generate(iter(wire.request("The cat sat"))))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(service="")).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
