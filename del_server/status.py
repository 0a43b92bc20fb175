"""Errors to gRPC status codes, in one table (DESIGN §7).

Anything not in the table is a bug: it goes out as INTERNAL with only the request id, and the
traceback stays in the server log under that id.
"""

from __future__ import annotations

import grpc

from del_client.errors import (
    BundleMismatchError,
    DELError,
    EmbeddingInputError,
    FrameError,
    LimitExceededError,
    PrivacyParameterError,
)

from .errors import (
    AuthError,
    IdleStreamError,
    MechanismDisabledError,
    OverloadedError,
    RequestTimeoutError,
    ShuttingDownError,
    UnknownModelError,
    WrongTaskError,
)

STATUS_FOR: dict[type[DELError], grpc.StatusCode] = {
    FrameError: grpc.StatusCode.INVALID_ARGUMENT,
    PrivacyParameterError: grpc.StatusCode.INVALID_ARGUMENT,
    EmbeddingInputError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownModelError: grpc.StatusCode.INVALID_ARGUMENT,
    BundleMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    MechanismDisabledError: grpc.StatusCode.FAILED_PRECONDITION,
    WrongTaskError: grpc.StatusCode.FAILED_PRECONDITION,
    LimitExceededError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    AuthError: grpc.StatusCode.UNAUTHENTICATED,
    IdleStreamError: grpc.StatusCode.DEADLINE_EXCEEDED,
    RequestTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    ShuttingDownError: grpc.StatusCode.UNAVAILABLE,
}


def end_call(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """Give the call its final status; the handler then returns (or ends its stream).

    Not `context.abort()`: in grpcio's asyncio server an abort from a streaming handler leaks
    about 1 KB of native memory per call (measured in tests/hardening/test_fuzz.py; compare
    grpc/grpc#43360), and a server refuses hostile streams by the thousand. A status set
    on the context and a plain return free everything.
    """
    context.set_code(code)
    context.set_details(details)


def internal_error(context: grpc.aio.ServicerContext, request_id: str) -> None:
    """INTERNAL, with nothing of the failure but the id to look it up in the server log."""
    end_call(
        context,
        grpc.StatusCode.INTERNAL,
        f"internal error; the server log has its details under request id {request_id}",
    )


def status_for(error: DELError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL
