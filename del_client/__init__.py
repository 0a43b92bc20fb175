"""DEL client: private, low-bandwidth split inference without torch.

    from del_client import Client, ClientConfig

    with Client(ClientConfig("localhost:50051")) as client:
        generation = client.generate("Once upon a time", mu=10, max_new_tokens=32)
        for delta in generation:                   # text as the server streams it
            print(delta, end="", flush=True)
        print(generation.result.epsilon_prompt)    # exact ε spent on the prompt

AsyncClient has the same methods as coroutines (`async for delta in client.generate(...)`).
Both take one ClientConfig and return a GenerationResult (text, usage on the wire, exact ε);
a status from the server raises a ServerError subclass (PreconditionFailedError, ...).

Underneath, the client turns tokens into projected embeddings (ClientBundle), privatizes them
with a differentially private stochastic quantizer (BinomialQuantizer), accounts for the
privacy spent exactly (accountant, PrivacyBudget) and bit-packs the symbols into frames (codec),
or entropy-codes them (symbol_model, ans) when the server decodes that.
"""

from importlib import import_module

from .errors import (
    AuthenticationError,
    BudgetExceededError,
    BundleError,
    BundleMismatchError,
    ConfigError,
    DeadlineExceededError,
    DELError,
    EmbeddingInputError,
    FrameError,
    InvalidRequestError,
    LedgerError,
    LimitExceededError,
    PreconditionFailedError,
    PrivacyParameterError,
    ProtocolError,
    RequestOptionError,
    ResourceExhaustedError,
    ServerError,
    ServerUnavailableError,
)

# The rest of the public API, by defining module, imported on first use: between them these
# modules load numpy, gRPC, numba and scipy (seconds), which `del-client --help`, or a program
# that only catches a DELError, should not wait for.
_LAZY = {
    "AsyncClient": "aio",
    "BinomialQuantizer": "mechanism",
    "Client": "client",
    "ClientBundle": "bundle",
    "ClientConfig": "config",
    "GenerationResult": "results",
    "LedgerBudget": "ledger",
    "PrivacyBudget": "budget",
    "PrivacyLedger": "ledger",
    "PrivacyReport": "privacy",
    "PrivacySpec": "mechanism",
    "dequantize": "mechanism",
    "privacy_report": "privacy",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # once: later lookups never come back here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})  # names not yet imported complete too


__all__ = [
    "AuthenticationError",
    "BudgetExceededError",
    "BundleError",
    "BundleMismatchError",
    "ConfigError",
    "DELError",
    "DeadlineExceededError",
    "EmbeddingInputError",
    "FrameError",
    "InvalidRequestError",
    "LedgerError",
    "LimitExceededError",
    "PreconditionFailedError",
    "PrivacyParameterError",
    "ProtocolError",
    "RequestOptionError",
    "ResourceExhaustedError",
    "ServerError",
    "ServerUnavailableError",
    *_LAZY,
]
