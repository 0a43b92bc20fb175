"""Faults: a client that vanishes mid-stream, a server that restarts or drains mid-stream, and a
path that drops streams. Slots come back, errors are clear, and a retry resends the very same
privatized frames, so the privacy budget is charged once."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
from hardening_kit import sample, wait_until, wire_kit

from del_client import (
    AsyncClient,
    Client,
    ClientConfig,
    DeadlineExceededError,
    ServerUnavailableError,
)
from del_client.ledger import LedgerBudget, PrivacyLedger
from del_client.proto import inference_pb2, inference_pb2_grpc
from del_server.settings import SettingError
from del_server.threaded import loop_in_thread

PROMPT = "Once upon a time"

# A client in its own process: it streams a request read from stdin, says "first" when a reply
# arrives, and then waits to be killed.
VANISHING_CLIENT = """
import sys, time, grpc
target, messages = sys.argv[1], [bytes.fromhex(h) for h in sys.stdin.read().split()]
channel = grpc.insecure_channel(target)
generate = channel.stream_stream("/del.v1.SplitInference/Generate")  # bytes in, bytes out
for reply in generate(iter(messages)):
    print("first", flush=True)
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def loopback(serve, settings_for):
    with serve(settings_for(max_new_tokens=256)) as loopback:
        yield loopback


def test_a_client_that_dies_mid_stream_frees_its_slot(loopback):
    with grpc.insecure_channel(loopback.target) as channel:
        messages = wire_kit(channel).private_request(max_new_tokens=256, temperature=1.0)
    cancelled = sample(loopback, "del_requests_total", {"code": "CANCELLED"})
    client = subprocess.Popen(
        [sys.executable, "-c", VANISHING_CLIENT, loopback.target],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        client.stdin.write(" ".join(m.SerializeToString().hex() for m in messages))
        client.stdin.close()
        assert client.stdout.readline().strip() == "first"
        assert sample(loopback, "del_num_requests_running") == 1
        client.send_signal(signal.SIGKILL)  # no cancel, no goodbye: the socket just closes
    finally:
        client.kill()
        client.wait(timeout=10)
    wait_until(
        lambda: sample(loopback, "del_requests_total", {"code": "CANCELLED"}) == cancelled + 1,
        what="the server to record the disconnect",
    )
    # The engine drops a cancelled sequence at its next round: the gauge follows within one.
    wait_until(lambda: sample(loopback, "del_num_requests_running") == 0, what="the slot")
    assert sample(loopback, "del_num_streams_open") == 0


def test_a_stream_the_server_cuts_off_mid_generation_frees_its_engine_slot(
    serve, settings_for, tmp_path
):
    """The server's cap on a request is a third of what the same generation (raw prompt, fixed
    seed: the same tokens every time) takes on this machine, measured first: it is cut off
    mid-generation however fast the machine is."""
    request = {"mechanism": "raw", "max_new_tokens": 256, "temperature": 1.0, "seed": 7}
    config = ClientConfig("127.0.0.1:1", bundle_cache_dir=tmp_path, retries=0)
    with (
        serve(settings_for(max_new_tokens=256, enable_raw=True)) as server,
        Client(dataclasses.replace(config, target=server.target)) as client,
    ):
        client.generate(PROMPT, mechanism="raw", max_new_tokens=1).collect()  # the bundle
        started = time.perf_counter()
        whole = client.generate(PROMPT, **request).collect()
        cap = round((time.perf_counter() - started) / 3, 3)
    assert whole.usage.generated_tokens > 16  # long enough to be cut off in the middle
    with serve(settings_for(max_new_tokens=256, enable_raw=True, max_request_s=cap)) as server:
        with Client(dataclasses.replace(config, target=server.target)) as client:
            generation = client.generate(PROMPT, **request)
            with pytest.raises(
                DeadlineExceededError, match=rf"limit of {cap:g} s per request"
            ) as cut:
                generation.collect()
        assert cut.value.code == "DEADLINE_EXCEEDED"
        wait_until(lambda: sample(server, "del_num_requests_running") == 0, what="the slot")
        assert sample(server, "del_num_streams_open") == 0
        assert sample(server, "del_requests_total", {"code": "DEADLINE_EXCEEDED"}) == 1


def test_a_server_restart_mid_stream_is_a_clear_unavailable_and_the_client_recovers(
    serve, settings_for, tmp_path
):
    config = ClientConfig("127.0.0.1:1", bundle_cache_dir=tmp_path, deadline_s=20, retries=0)
    with serve(settings_for(max_new_tokens=256)) as first:
        port = first.running.port
        config = dataclasses.replace(config, target=f"127.0.0.1:{port}")
        client = Client(config)
        deltas = iter(client.generate(PROMPT, mu=10, max_new_tokens=256, temperature=1.0))
        next(deltas)  # streaming
        first.call(first.running.stop(grace_s=0))  # the process dies, as far as clients can tell
        with pytest.raises(ServerUnavailableError) as failure:
            list(deltas)
    assert failure.value.code == "UNAVAILABLE"
    assert "unreachable, restarting or shutting down" in str(failure.value)
    with serve(settings_for(port=port)):  # back on the same port: the same client carries on
        assert client.generate(PROMPT, mu=10, max_new_tokens=4).collect().usage.prompt_tokens == 4
    client.close()


def test_graceful_shutdown_completes_streams_in_flight_and_refuses_new_ones(serve, settings_for):
    """The stream in flight holds its upload open across the drain, so the stop cannot be
    done before it is (a stream that just generates may finish first on a fast machine)."""
    with serve(settings_for(grace_s=30)) as server, grpc.insecure_channel(server.target) as channel:
        kit = wire_kit(channel)
        stub = inference_pb2_grpc.SplitInferenceStub(channel)
        messages = kit.private_request(max_new_tokens=16)
        released = threading.Event()

        def upload_held_open():
            yield messages[0]
            released.wait(30)
            yield from messages[1:]

        in_flight = stub.Generate(upload_held_open())
        wait_until(lambda: sample(server, "del_num_streams_open") == 1, what="the stream")
        stopping = server.submit(server.running.stop())
        wait_until(lambda: refuses_new_calls(server.target), what="new calls to be refused")
        assert not stopping.done()  # draining the stream in flight
        released.set()
        replies = list(in_flight)
        stopping.result(timeout=30)
    assert replies[-1].final.usage.generated_tokens == 16


def test_streams_the_drain_refuses_or_cuts_off_end_unavailable_not_cancelled(serve, settings_for):
    """UNAVAILABLE tells a client to retry, on another replica; CANCELLED would say that the
    client gave up itself. Both for a stream that reaches the service once the drain began,
    and for one still sending its prompt when the drain time runs out."""
    with serve(settings_for()) as server, grpc.insecure_channel(server.target) as channel:
        kit = wire_kit(channel)
        stub = inference_pb2_grpc.SplitInferenceStub(channel)
        messages = kit.private_request()
        released = threading.Event()

        def header_then_nothing():
            yield messages[0]
            released.wait(30)

        uploading = stub.Generate(header_then_nothing())
        wait_until(lambda: sample(server, "del_num_streams_open") == 1, what="the stream")
        server.running.service.drain()  # what stop() does first
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Generate(iter(messages), timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == "the server is shutting down: retry"
        server.call(server.running.stop(grace_s=0.5))
        with pytest.raises(grpc.RpcError) as cut_off:
            list(uploading)
        released.set()
    assert cut_off.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_until(
        lambda: sample(server, "del_requests_total", {"code": "UNAVAILABLE"}) == 2,
        what="both streams counted UNAVAILABLE",
    )
    assert sample(server, "del_requests_total", {"code": "CANCELLED"}) == 0


def refuses_new_calls(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.SplitInferenceStub(channel)
        try:
            stub.GetManifest(inference_pb2.GetManifestRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE
    return False


# ── Retries ─────────────────────────────────────────────────────────────────────────────


class FlakyPath(inference_pb2_grpc.SplitInferenceServicer):
    """A proxy in front of a real server that drops the first `drops` Generate streams with
    UNAVAILABLE, after `replies_first` replies, and records what each attempt carried."""

    def __init__(self, upstream: str, *, drops: int, replies_first: int = 0) -> None:
        self.upstream = upstream
        self.drops = drops
        self.replies_first = replies_first
        self.attempts: list[list[bytes]] = []
        self._stub = None

    def stub(self):
        if self._stub is None:  # created on the proxy's own event loop
            self._stub = inference_pb2_grpc.SplitInferenceStub(
                grpc.aio.insecure_channel(self.upstream)
            )
        return self._stub

    async def GetManifest(self, request, context):  # noqa: N802 - the proto's name
        return await self.stub().GetManifest(request)

    async def FetchClientBundle(self, request, context):  # noqa: N802
        async for chunk in self.stub().FetchClientBundle(request):
            yield chunk

    async def Generate(self, request_iterator, context):  # noqa: N802
        messages = [message async for message in request_iterator]
        self.attempts.append([m.SerializeToString() for m in messages])
        drop = len(self.attempts) <= self.drops
        replies = 0
        async for reply in self.stub().Generate(iter(messages)):
            if drop and replies == self.replies_first:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset by the path")
            yield reply
            replies += 1


@contextmanager
def flaky_path(upstream: str, **behaviour) -> Iterator[tuple[str, FlakyPath]]:
    path = FlakyPath(upstream, **behaviour)

    async def start():
        server = grpc.aio.server()
        inference_pb2_grpc.add_SplitInferenceServicer_to_server(path, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    with loop_in_thread("flaky-path") as thread:
        server, port = thread.call(start(), 30)
        try:
            yield f"127.0.0.1:{port}", path
        finally:
            thread.call(server.stop(0), 30)


def run_generation(kind: str, config: ClientConfig, budget):
    """One generation through the sync or the asyncio client."""
    if kind == "sync":
        with Client(config) as client:
            return client.generate(PROMPT, mu=10, max_new_tokens=4, budget=budget).collect()

    async def run():
        async with AsyncClient(config) as client:
            return await client.generate(PROMPT, mu=10, max_new_tokens=4, budget=budget).collect()

    return asyncio.run(run())


@pytest.fixture
def ledger_budget(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    return LedgerBudget(ledger, identity="alice", epsilon=1e6, delta=1e-5)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_dropped_stream_is_retried_with_the_same_frames_and_charged_once(
    server, tmp_path, ledger_budget, kind
):
    with flaky_path(server.target, drops=2) as (target, path):
        config = ClientConfig(target, bundle_cache_dir=tmp_path, retries=3, retry_backoff_s=0.01)
        result = run_generation(kind, config, ledger_budget)
    assert len(path.attempts) == 3
    assert path.attempts[0] == path.attempts[1] == path.attempts[2]  # byte for byte
    entry = ledger_budget.ledger.entry("alice")
    assert entry.requests == 1
    assert ledger_budget.spent == pytest.approx(result.epsilon_prompt, rel=1e-12)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stream_dropped_after_a_token_arrived_is_not_retried(
    server, tmp_path, ledger_budget, kind
):
    with flaky_path(server.target, drops=1, replies_first=1) as (target, path):
        config = ClientConfig(target, bundle_cache_dir=tmp_path, retries=3, retry_backoff_s=0.01)
        with pytest.raises(ServerUnavailableError, match="connection reset by the path"):
            run_generation(kind, config, ledger_budget)
    assert len(path.attempts) == 1
    assert ledger_budget.ledger.entry("alice").requests == 1


def test_retries_end_after_the_configured_number_still_charged_once(
    server, tmp_path, ledger_budget
):
    with flaky_path(server.target, drops=10) as (target, path):
        config = ClientConfig(target, bundle_cache_dir=tmp_path, retries=2, retry_backoff_s=0.01)
        with pytest.raises(ServerUnavailableError):
            run_generation("sync", config, ledger_budget)
    assert len(path.attempts) == 3
    assert len({tuple(attempt) for attempt in path.attempts}) == 1
    assert ledger_budget.ledger.entry("alice").requests == 1


def test_a_start_that_fails_late_leaves_nothing_running(settings_for, monkeypatch):
    """The health port is taken while the model loads: start fails after the engine and the
    main port came up, naming the port, and gives everything back."""
    from del_server import server

    monkeypatch.setattr(server, "check_ports", lambda settings: None)  # free when checked
    engines = lambda: {t for t in threading.enumerate() if t.name == "del-engine"}  # noqa: E731
    before = engines()  # other tests' servers may be running
    with socket.socket() as taken, socket.socket() as probe:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        probe.bind(("127.0.0.1", 0))
        main_port = probe.getsockname()[1]
        probe.close()
        settings = settings_for(port=main_port, health_port=taken.getsockname()[1])
        with pytest.raises(SettingError, match=f"health_port {settings.health_port} cannot be"):
            asyncio.run(server.start(settings))
    assert engines() == before
    with socket.socket() as again:
        again.bind(("127.0.0.1", main_port))  # the main port was given back
