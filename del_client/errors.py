"""Exceptions raised by del_client.

Catch at the level you care about::

    DELError
    ├── PrivacyParameterError (ValueError)   a mechanism or accountant parameter is out of range
    ├── EmbeddingInputError (ValueError)     an embedding array has the wrong shape, dtype or values
    ├── BudgetExceededError                  a request would spend more privacy than allowed
    ├── LedgerError                          the persistent privacy ledger cannot be read or written
    ├── FrameError (ValueError)              a frame or payload is malformed or contradicts its header
    ├── LimitExceededError                   a request is larger than the server's limits allow
    ├── BundleError (ValueError)             a client bundle is malformed
    │   └── BundleMismatchError              its digest or version is not the one expected
    ├── ConfigError (ValueError)             a ClientConfig value is invalid
    ├── RequestOptionError (ValueError)      a generate option is invalid here; nothing was sent
    ├── ProtocolError                        the server's replies broke the wire contract
    └── ServerError                          the server ended a call with a gRPC status (.code)
        ├── InvalidRequestError              INVALID_ARGUMENT: a malformed frame or parameter
        ├── PreconditionFailedError          FAILED_PRECONDITION: e.g. a stale bundle digest
        ├── ResourceExhaustedError           RESOURCE_EXHAUSTED: over a server limit, or busy
        ├── ServerUnavailableError           UNAVAILABLE: unreachable or shutting down
        │                                    (also a ConnectionError)
        ├── DeadlineExceededError            DEADLINE_EXCEEDED: the call ran past its deadline
        │                                    (also a TimeoutError)
        └── AuthenticationError              UNAUTHENTICATED: no valid token (PermissionError)

The server maps the errors it raises to gRPC status codes in one table (FrameError ->
INVALID_ARGUMENT, BundleMismatchError -> FAILED_PRECONDITION, ...); the client maps the
status codes back to ServerError subclasses in one table (del_client.status).
"""


class DELError(Exception):
    """Base class of every error DEL raises on purpose."""


class PrivacyParameterError(DELError, ValueError):
    """A privacy parameter (bits, clip, scale, mu, epsilon, delta, ...) is out of its range."""


class EmbeddingInputError(DELError, ValueError):
    """Input embeddings are not a finite float array of the expected shape."""


class BudgetExceededError(DELError):
    """Sending the request would exceed the configured privacy budget; nothing was sent."""


class LedgerError(DELError):
    """The privacy ledger file is unreadable, corrupt or locked: no request is sent without it."""


class FrameError(DELError, ValueError):
    """A frame or bit-packed payload is malformed or inconsistent with its stream header."""


class LimitExceededError(DELError):
    """A request exceeds a configured limit (prompt tokens, new tokens, queue length)."""


class BundleError(DELError, ValueError):
    """A client bundle cannot be read: missing fields, wrong shapes, unknown format."""


class BundleMismatchError(BundleError):
    """A client bundle's digest or format version differs from what the server advertises."""


class ConfigError(DELError, ValueError):
    """A ClientConfig value (target, deadline, cache directory, frame size) is invalid."""


class RequestOptionError(DELError, ValueError):
    """A generate option is out of range or not offered by this server, found before sending."""


class ProtocolError(DELError):
    """The server's replies do not follow protos/del/v1 (e.g. a stream without its Final)."""


class ServerError(DELError):
    """The server ended the call with a gRPC status other than OK.

    `code` is the status code's name ("FAILED_PRECONDITION", ...) and `details` the server's
    own message, which says what to change. A subclass whose status carries little (a
    transport failure, or a refusal that deliberately says nothing) puts a `hint` first.
    """

    hint = ""

    def __init__(self, code: str, details: str) -> None:
        message = ": ".join(part for part in (self.hint, details) if part)
        super().__init__(f"{message} (status {code})")
        self.code = code
        self.details = details


class InvalidRequestError(ServerError):
    """INVALID_ARGUMENT: the server found a frame, mechanism or sampling parameter malformed."""


class PreconditionFailedError(ServerError):
    """FAILED_PRECONDITION: e.g. the bundle is stale (read the manifest again) or raw is off."""


class ResourceExhaustedError(ServerError):
    """RESOURCE_EXHAUSTED: the request is over a server limit, or the server is busy.

    The server uses one code for both, so only `details` tells whether retrying can help.
    """


class ServerUnavailableError(ServerError, ConnectionError):
    """UNAVAILABLE: the server cannot be reached or is shutting down; retrying later may help.

    The client already retried if nothing had come back yet (ClientConfig.retries); after the
    first token it does not, since the text so far has been handed out.
    """

    hint = "the server is unreachable, restarting or shutting down"


class DeadlineExceededError(ServerError, TimeoutError):
    """DEADLINE_EXCEEDED: the call took longer than ClientConfig.deadline_s, or than the
    server's own limits (a whole request, or the wait for the client's next message)."""


class AuthenticationError(ServerError, PermissionError):
    """UNAUTHENTICATED: the server wants a valid bearer token (ClientConfig.token).

    The server says nothing more on purpose: which part was wrong would help a guesser.
    """

    hint = (
        "the server refused the call's credentials: give a valid token (ClientConfig.token; "
        "for del-client, $DEL_TOKEN or --token-file)"
    )
