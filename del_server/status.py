"""Errors to gRPC status codes, in one table (DESIGN §7).

Anything not in the table is a bug: it goes out as INTERNAL with only the request id, and the
traceback stays in the server log.
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

from .errors import MechanismDisabledError, OverloadedError, UnknownModelError

STATUS_FOR: dict[type[DELError], grpc.StatusCode] = {
    FrameError: grpc.StatusCode.INVALID_ARGUMENT,
    PrivacyParameterError: grpc.StatusCode.INVALID_ARGUMENT,
    EmbeddingInputError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownModelError: grpc.StatusCode.INVALID_ARGUMENT,
    BundleMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    MechanismDisabledError: grpc.StatusCode.FAILED_PRECONDITION,
    LimitExceededError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_for(error: DELError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL
