"""Server-side errors; each maps to one gRPC status code in status.py."""

from del_client.errors import DELError


class OverloadedError(DELError):
    """The waiting queue is full: the client should back off and retry."""


class UnknownModelError(DELError):
    """The header names a model this server does not serve."""


class MechanismDisabledError(DELError):
    """The header asks for a mechanism this server does not offer (e.g. raw when disabled)."""
