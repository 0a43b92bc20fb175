"""Jobs that apply to every RPC before servicer code runs (STYLE §6), one class each.

    AuthInterceptor          a valid bearer token on every method except grpc.health.v1,
                             or UNAUTHENTICATED with no details (nothing to learn from it)
    MalformedRequestGuard    a unary request that is not valid protobuf gets INVALID_ARGUMENT
                             (gRPC's own answer is UNKNOWN, carrying the parser's exception)
    InternalErrorGuard       a unary-request method that raises answers INTERNAL with a
                             request id its logged traceback carries (gRPC's own answer is
                             UNKNOWN, carrying the exception's text)

Generate reads its own stream, so service.py turns an undecodable stream message into
INVALID_ARGUMENT, and an unexpected exception into INTERNAL, there; the guards cover the
unary-request methods.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from .auth import TokenStore
from .errors import AuthError, UndecodableMessageError
from .status import end_call, internal_error, status_for

log = logging.getLogger(__name__)
HEALTH_PREFIX = "/grpc.health.v1.Health/"  # load balancers and probes carry no token
_UNDECODABLE = object()


def _handler_like(
    handler: grpc.RpcMethodHandler | None, behavior: Callable, **serializers
) -> grpc.RpcMethodHandler:
    """A method handler of the same streaming shape as `handler`, running `behavior`."""
    request_streaming = handler is not None and handler.request_streaming
    response_streaming = handler is not None and handler.response_streaming
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[request_streaming, response_streaming]
    return factory(behavior, **serializers)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses any call but a health check unless it carries `authorization: Bearer <token>`."""

    def __init__(self, tokens: TokenStore, on_refused: Callable[[str], None]) -> None:
        self._tokens = tokens
        self._on_refused = on_refused  # (method) -> None, for the metrics

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(HEALTH_PREFIX):
            return await continuation(handler_call_details)
        presented = [
            value
            for key, value in handler_call_details.invocation_metadata or ()
            if key == "authorization"
        ]
        if len(presented) == 1 and self._tokens.accepts(presented[0]):
            return await continuation(handler_call_details)
        self._on_refused(method)
        code = status_for(AuthError())

        async def refuse(request_or_iterator, context):
            end_call(context, code, "")

        # The request is never parsed (no deserializer): a stranger's bytes stay bytes.
        return _handler_like(await continuation(handler_call_details), refuse)


class MalformedRequestGuard(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT, not UNKNOWN, to a unary request that does not parse."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        original = handler.unary_unary or handler.unary_stream
        deserialize = handler.request_deserializer
        message = f"the request to {handler_call_details.method} is not a valid protobuf"
        code = status_for(UndecodableMessageError(message))

        def parse(data: bytes):
            try:
                return deserialize(data)
            except DecodeError:
                return _UNDECODABLE

        if inspect.isasyncgenfunction(original):

            async def behavior(request, context):
                if request is _UNDECODABLE:
                    end_call(context, code, message)
                    return
                async for response in original(request, context):
                    yield response

        else:

            async def behavior(request, context):
                if request is _UNDECODABLE:
                    end_call(context, code, message)
                    return None
                return await original(request, context)

        return _handler_like(
            handler,
            behavior,
            request_deserializer=parse,
            response_serializer=handler.response_serializer,
        )


class InternalErrorGuard(grpc.aio.ServerInterceptor):
    """Answers INTERNAL, with an id to find its traceback in the log, when a unary-request
    method raises; a status the method chose itself (an abort) goes out as it is."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        original = handler.unary_unary or handler.unary_stream
        method = handler_call_details.method

        def fail(context) -> None:
            request_id = uuid.uuid4().hex
            log.exception("%s failed", method, extra={"request_id": request_id})
            internal_error(context, request_id)

        if inspect.isasyncgenfunction(original):

            async def behavior(request, context):
                try:
                    async for response in original(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    fail(context)

        else:

            async def behavior(request, context):
                try:
                    return await original(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    fail(context)
                    return None

        return _handler_like(
            handler,
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def server_interceptors(
    tokens: TokenStore | None, on_refused: Callable[[str], None]
) -> list[grpc.aio.ServerInterceptor]:
    """Authentication first (a stranger learns nothing), then the request guards."""
    guards: list[grpc.aio.ServerInterceptor] = [MalformedRequestGuard(), InternalErrorGuard()]
    return guards if tokens is None else [AuthInterceptor(tokens, on_refused), *guards]
