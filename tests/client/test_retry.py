"""When the client retries: UNAVAILABLE before any reply, a bounded number of times, with
growing jittered waits, never past the call's deadline."""

from __future__ import annotations

import grpc
import pytest

from del_client.config import ClientConfig
from del_client.retry import Attempts


class Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


UNAVAILABLE = Failed(grpc.StatusCode.UNAVAILABLE)


def attempts(retries=3, backoff_s=0.1, deadline_s=100.0, jitter=1.0, now=None) -> Attempts:
    clock = now or [0.0]
    config = ClientConfig(
        "127.0.0.1:1", retries=retries, retry_backoff_s=backoff_s, deadline_s=deadline_s
    )
    return Attempts.start(config, clock=lambda: clock[0], jitter=lambda: jitter)


def test_unavailable_before_a_reply_is_retried_with_doubling_waits():
    state = attempts(retries=3, backoff_s=0.1)
    assert [state.after(UNAVAILABLE, replied=False) for _ in range(4)] == [0.1, 0.2, 0.4, None]


def test_waits_are_jittered_and_capped():
    state = attempts(retries=10, backoff_s=1.0, jitter=0.5)
    delays = [state.after(UNAVAILABLE, replied=False) for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 2.5, 2.5, 2.5, 2.5, 2.5]  # max_backoff_s = 5 before jitter


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_other_statuses_are_not_retried(code):
    assert attempts().after(Failed(code), replied=False) is None


def test_nothing_is_retried_once_a_reply_arrived():
    """The caller has seen text: a second attempt could hand out different text."""
    assert attempts().after(UNAVAILABLE, replied=True) is None


def test_no_retry_starts_that_the_deadline_would_cut_short():
    now = [0.0]
    state = attempts(retries=5, backoff_s=1.0, deadline_s=2.5, now=now)
    assert state.timeout() == 2.5
    assert state.after(UNAVAILABLE, replied=False) == 1.0
    now[0] = 1.2  # the first wait and a second failed attempt took this long
    assert state.timeout() == pytest.approx(1.3)
    assert state.after(UNAVAILABLE, replied=False) is None  # a 2 s wait would pass the deadline


def test_zero_retries_means_one_attempt():
    assert attempts(retries=0).after(UNAVAILABLE, replied=False) is None


def test_an_error_without_a_status_is_not_retried():
    assert attempts().after(grpc.RpcError(), replied=False) is None
