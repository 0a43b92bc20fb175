"""Every limit is a setting, and going over it ends the stream with a status that says which
limit: RESOURCE_EXHAUSTED for sizes and slots, DEADLINE_EXCEEDED for time. A stream the server
ends gives its slot back."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest
from hardening_kit import sample, wait_until, wire_kit

from del_client.proto import inference_pb2, inference_pb2_grpc

# Margins of 0.3 s or more between the waits below and these limits, for a busy machine.
IDLE_S = 1.0
REQUEST_S = 1.6


@pytest.fixture(scope="module")
def tight(serve, settings_for):
    """A server with small limits: 2 + 1 stream slots, 2 frames of 64 bytes (8 tokens of 16
    coordinates at 4 bits), 6 prompt tokens, short timeouts."""
    settings = settings_for(
        max_running=2,
        max_waiting=1,
        max_prompt_tokens=6,
        max_new_tokens=16,
        default_new_tokens=16,
        max_frames=2,
        max_frame_bytes=64,
        max_message_bytes=1024,
        idle_timeout_s=IDLE_S,
        max_request_s=REQUEST_S,
    )
    with serve(settings) as loopback:
        yield loopback


@pytest.fixture(scope="module")
def channel(tight):
    with grpc.insecure_channel(tight.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return inference_pb2_grpc.SplitInferenceStub(channel)


@pytest.fixture(scope="module")
def kit(channel):
    return wire_kit(channel)


def refusal(stub, messages) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failure:
        list(stub.Generate(iter(messages), timeout=10))
    return failure.value


def frame(kit, **changes) -> inference_pb2.GenerateRequest:
    message = inference_pb2.GenerateRequest()
    message.CopyFrom(kit.private_request()[1])
    for name, value in changes.items():
        setattr(message.frame, name, value)
    return message


def test_the_manifest_advertises_the_frame_limits(kit):
    assert (kit.model.max_frames, kit.model.max_frame_payload_bytes) == (2, 64)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda kit: kit.private_request(max_new_tokens=17),
            "max_new_tokens 17 exceeds the limit of 16",
            id="new tokens",
        ),
        pytest.param(
            lambda kit: kit.private_request("the cat sat on the mat and ran away"),
            "prompt exceeds the limit of 6 tokens",
            id="prompt tokens",
        ),
        pytest.param(
            lambda kit: [
                kit.private_request()[0],
                *(frame(kit, sequence=i, token_count=1, payload=b"\0" * 8) for i in range(3)),
            ],
            "exceeds the limit of 2 frames",
            id="frames",
        ),
        pytest.param(
            lambda kit: [kit.private_request()[0], frame(kit, token_count=9, payload=b"\0" * 72)],
            "payload of 72 bytes exceeds the limit of 64 bytes",
            id="frame payload",
        ),
        pytest.param(
            lambda kit: [kit.private_request()[0], frame(kit, payload=b"\0" * 2000)],
            "larger than max",
            id="message size",
        ),
    ],
)
def test_each_limit_gets_resource_exhausted_naming_it(tight, stub, kit, build, message):
    failure = refusal(stub, build(kit))
    assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message in failure.details()
    wait_until(lambda: sample(tight, "del_num_streams_open") == 0, what="the slot to be freed")


class OpenStream:
    """A Generate stream whose messages the test sends one by one, from its own thread."""

    def __init__(self, stub) -> None:
        self._outbox: queue.Queue = queue.Queue()
        self.call = stub.Generate(iter(self._outbox.get, None), timeout=30)
        self.error: grpc.RpcError | None = None
        self.replies: list = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            self.replies.extend(self.call)
        except grpc.RpcError as exc:
            self.error = exc

    def send(self, message) -> None:
        self._outbox.put(message)

    def finish(self, timeout_s: float = 10.0) -> grpc.RpcError | None:
        self._reader.join(timeout_s)
        assert not self._reader.is_alive(), "the server never ended the stream"
        self._outbox.put(None)
        return self.error


def test_a_stream_that_sends_nothing_is_closed_after_the_idle_timeout(tight, stub):
    started = time.monotonic()
    stream = OpenStream(stub)
    wait_until(lambda: sample(tight, "del_num_streams_open") == 1, what="the stream to open")
    error = stream.finish()
    assert IDLE_S <= time.monotonic() - started < IDLE_S + 2
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"no message from the client for {IDLE_S:g} s" in error.details()
    wait_until(lambda: sample(tight, "del_num_streams_open") == 0, what="the slot to be freed")


def test_a_client_that_stops_between_frames_is_cut_off(tight, stub, kit):
    header, first, *_ = kit.private_request()
    stream = OpenStream(stub)
    stream.send(header)
    stream.send(first)  # ... and then nothing: neither the next frame nor the end marker
    error = stream.finish()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "before its end marker" in error.details()
    wait_until(lambda: sample(tight, "del_num_streams_open") == 0, what="the slot to be freed")


def test_a_stream_that_outlives_the_request_limit_is_cut_off(tight, stub, kit):
    """Each message comes within the idle timeout, but the stream as a whole takes too long."""
    header, first, *_ = kit.private_request()
    stream = OpenStream(stub)
    stream.send(header)
    time.sleep(0.7)  # within IDLE_S; what is left of REQUEST_S (0.9 s) is now the shorter
    stream.send(first)
    error = stream.finish()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"ran past the server's limit of {REQUEST_S:g} s per request" in error.details()
    wait_until(lambda: sample(tight, "del_num_streams_open") == 0, what="the slot to be freed")


def test_streams_beyond_the_slots_are_refused_until_a_slot_is_freed(serve, settings_for, kit):
    # Its own server, whose idle timeout cannot free a slot while the test looks.
    settings = settings_for(max_running=2, max_waiting=1, idle_timeout_s=30)
    with serve(settings) as roomy, grpc.insecure_channel(roomy.target) as channel:
        stub = inference_pb2_grpc.SplitInferenceStub(channel)
        held = [OpenStream(stub) for _ in range(3)]  # max_running 2 + max_waiting 1
        wait_until(lambda: sample(roomy, "del_num_streams_open") == 3, what="three open streams")
        failure = refusal(stub, kit.private_request())
        assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "all 3 stream slots are taken" in failure.details()
        held[0].call.cancel()  # one client gives up: its slot comes back
        assert held[0].finish().code() == grpc.StatusCode.CANCELLED
        wait_until(lambda: sample(roomy, "del_num_streams_open") == 2, what="a slot to be freed")
        replies = list(stub.Generate(iter(kit.private_request()), timeout=10))
        assert replies[-1].WhichOneof("kind") == "final"
        for stream in held[1:]:
            stream.call.cancel()
            stream.finish()
        wait_until(lambda: sample(roomy, "del_num_streams_open") == 0, what="every slot")


def test_a_frame_that_fits_every_limit_is_accepted(stub, kit):
    messages = kit.private_request()
    assert all(len(m.frame.payload) <= 64 for m in messages[1:-1])
    assert list(stub.Generate(iter(messages), timeout=10))[-1].final.usage.prompt_tokens == 4


def test_limit_settings_are_validated(settings_for):
    with pytest.raises(ValueError, match="max_frame_bytes"):
        settings_for(max_frame_bytes=4096, max_message_bytes=4096)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        settings_for(idle_timeout_s=0)
    with pytest.raises(ValueError, match="max_frames"):
        settings_for(max_frames=0)
