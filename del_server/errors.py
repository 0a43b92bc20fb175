"""Server-side errors. The served calls' each map to one gRPC status code in status.py; an
offline command's InputError is one line on stderr and exit status 2."""

from del_client.errors import DELError, FrameError


class OverloadedError(DELError):
    """The waiting queue is full: the client should back off and retry."""


class UnknownModelError(DELError):
    """The header names a model this server does not serve."""


class MechanismDisabledError(DELError):
    """The header asks for a mechanism this server does not offer (e.g. raw when disabled)."""


class WrongTaskError(DELError):
    """The call is for the other task than the one this server's model serves (Generate on a
    classifier, Classify on a causal LM)."""


class ShuttingDownError(DELError):
    """The server stopped before this stream finished (its drain time ran out): try again."""


class AuthError(DELError):
    """The call carries no valid bearer token. The status says nothing more, on purpose."""


class IdleStreamError(DELError):
    """The client sent nothing for idle_timeout_s before its End marker: the slot is reclaimed."""


class RequestTimeoutError(DELError):
    """The stream outlived max_request_s, the server's cap on any client deadline."""


class UndecodableMessageError(FrameError):
    """A message is not a valid protobuf of the expected type (gRPC would call it INTERNAL)."""


class InputError(ValueError):
    """An offline command's input does not fit (text too short, a --dim above the model's width,
    a target out of reach): `del-server` says so in one line, with no traceback, after the
    model has loaded, where argparse could not know it."""
