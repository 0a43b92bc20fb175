"""The server's connection settings that make client-side balancing over a headless Service
work: a finite connection age sends GOAWAY so clients reconnect (and re-resolve), streams
open at that moment finish within the age grace, and keepalive and age settings are checked
when resolved."""

from __future__ import annotations

import argparse
import math
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from del_server.settings import Settings, resolve

# A connection's age counts from its first call, and gRPC jitters it by ±10 %.
AGE_S = 0.5


def connection_states(target: str, watch_s: float) -> list[grpc.ChannelConnectivity]:
    """The states one channel goes through while it answers a health check and then idles."""
    states = []
    with grpc.insecure_channel(target) as channel:
        channel.subscribe(states.append, try_to_connect=True)
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        time.sleep(watch_s)
    return states


def aging(serve, shared_dir, grace_s: float):
    """A server that sends connections away at AGE_S and lets their streams run `grace_s`."""
    settings = Settings(model=str(shared_dir / "models" / "stories260K"), port=0,
                        metrics_port=-1, max_connection_age_s=AGE_S,
                        max_connection_age_grace_s=grace_s)  # fmt: skip
    return serve(settings)


@pytest.fixture(scope="module")
def patient_server(serve, shared_dir):
    with aging(serve, shared_dir, grace_s=60) as loopback:
        yield loopback


def test_a_connection_older_than_the_max_age_is_sent_away(patient_server, server):
    ready = grpc.ChannelConnectivity.READY
    states = connection_states(patient_server.target, watch_s=3 * AGE_S)
    assert states[states.index(ready) + 1 :] == [grpc.ChannelConnectivity.IDLE]
    # Without a max age (the default) the connection stays up.
    assert connection_states(server.target, watch_s=3 * AGE_S)[-1] == ready


def test_a_stream_open_at_goaway_finishes_within_the_age_grace(
    patient_server, held_stream, tmp_path
):
    stream = held_stream(patient_server.target, tmp_path)
    time.sleep(2 * AGE_S)  # past the GOAWAY
    assert stream.finish().usage.generated_tokens >= 1


def test_a_stream_still_open_after_the_age_grace_is_cut(serve, shared_dir, held_stream, tmp_path):
    grace_s = 0.5
    with aging(serve, shared_dir, grace_s) as impatient_server:
        stream = held_stream(impatient_server.target, tmp_path)
        time.sleep(2 * (AGE_S + grace_s))  # well past the latest the grace can end
        with pytest.raises(grpc.RpcError) as failure:
            stream.finish()
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_connection_settings_resolve_from_the_environment():
    environ = {"DEL_MAX_CONNECTION_AGE_S": "300", "DEL_MAX_CONNECTION_AGE_GRACE_S": "60",
               "DEL_KEEPALIVE_TIME_S": "30", "DEL_KEEPALIVE_TIMEOUT_S": "10"}  # fmt: skip
    settings = resolve(argparse.Namespace(), environ=environ)
    assert (settings.max_connection_age_s, settings.max_connection_age_grace_s) == (300, 60)
    assert (settings.keepalive_time_s, settings.keepalive_timeout_s) == (30, 10)


@pytest.mark.parametrize(
    "bad",
    [{"keepalive_time_s": 0}, {"keepalive_timeout_s": -1}, {"max_connection_age_s": -1},
     {"max_connection_age_grace_s": math.nan}, {"grace_s": math.inf}],
)  # fmt: skip
def test_connection_settings_reject_negative_zero_or_non_finite_times(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Settings(**bad)
