"""gRPC status codes to ServerError subclasses, in one table used by both clients.

grpc.aio.AioRpcError is a grpc.RpcError, so one context manager serves the sync and the
asyncio client alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from .errors import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidRequestError,
    PreconditionFailedError,
    ResourceExhaustedError,
    ServerError,
    ServerUnavailableError,
)

ERROR_FOR_STATUS: dict[grpc.StatusCode, type[ServerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionFailedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
}


def server_error(error: grpc.RpcError) -> ServerError:
    """The ServerError for a failed call, carrying the status name and the server's message."""
    # Stub errors (sync rendezvous, AioRpcError) have code() and details(); a bare
    # grpc.RpcError has neither, and AioRpcError is not a grpc.Call, hence duck typing.
    has_status = callable(getattr(error, "code", None))
    code = error.code() if has_status else grpc.StatusCode.UNKNOWN
    details = (error.details() if has_status else None) or ""
    cls = ERROR_FOR_STATUS.get(code, ServerError)
    if not details and not cls.hint:  # say something, if only gRPC's debug string
        details = str(error)
    return cls(code.name, details)


@contextmanager
def raising_server_errors() -> Iterator[None]:
    """Re-raise any grpc.RpcError inside as its ServerError subclass."""
    try:
        yield
    except grpc.RpcError as exc:
        raise server_error(exc) from exc
