"""Exceptions raised by del_client.

Catch at the level you care about::

    DELError
    ├── PrivacyParameterError (ValueError)   a mechanism or accountant parameter is out of range
    ├── EmbeddingInputError (ValueError)     an embedding array has the wrong shape, dtype or values
    ├── BudgetExceededError                  a request would spend more privacy than allowed
    ├── FrameError (ValueError)              a frame or payload is malformed or contradicts its header
    ├── LimitExceededError                   a request is larger than the server's limits allow
    └── BundleError (ValueError)             a client bundle is malformed
        └── BundleMismatchError              its digest or version is not the one expected

The server maps these to gRPC status codes in one table (FrameError -> INVALID_ARGUMENT,
BundleMismatchError -> FAILED_PRECONDITION, ...).
"""


class DELError(Exception):
    """Base class of every error DEL raises on purpose."""


class PrivacyParameterError(DELError, ValueError):
    """A privacy parameter (bits, clip, scale, mu, epsilon, delta, ...) is out of its range."""


class EmbeddingInputError(DELError, ValueError):
    """Input embeddings are not a finite float array of the expected shape."""


class BudgetExceededError(DELError):
    """Sending the request would exceed the configured privacy budget; nothing was sent."""


class FrameError(DELError, ValueError):
    """A frame or bit-packed payload is malformed or inconsistent with its stream header."""


class LimitExceededError(DELError):
    """A request exceeds a configured limit (prompt tokens, new tokens, queue length)."""


class BundleError(DELError, ValueError):
    """A client bundle cannot be read: missing fields, wrong shapes, unknown format."""


class BundleMismatchError(BundleError):
    """A client bundle's digest or format version differs from what the server advertises."""
