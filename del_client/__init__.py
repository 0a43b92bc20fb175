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
privacy spent exactly (accountant, PrivacyBudget) and bit-packs the symbols into frames (codec).
"""

from .aio import AsyncClient
from .budget import PrivacyBudget
from .bundle import ClientBundle
from .client import Client
from .config import ClientConfig
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
from .ledger import LedgerBudget, PrivacyLedger
from .mechanism import BinomialQuantizer, PrivacySpec, dequantize
from .privacy import PrivacyReport, privacy_report
from .session import GenerationResult

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "BinomialQuantizer",
    "BudgetExceededError",
    "BundleError",
    "BundleMismatchError",
    "Client",
    "ClientBundle",
    "ClientConfig",
    "ConfigError",
    "DELError",
    "DeadlineExceededError",
    "EmbeddingInputError",
    "FrameError",
    "GenerationResult",
    "InvalidRequestError",
    "LedgerBudget",
    "LedgerError",
    "LimitExceededError",
    "PreconditionFailedError",
    "PrivacyBudget",
    "PrivacyLedger",
    "PrivacyParameterError",
    "PrivacyReport",
    "PrivacySpec",
    "ProtocolError",
    "RequestOptionError",
    "ResourceExhaustedError",
    "ServerError",
    "ServerUnavailableError",
    "dequantize",
    "privacy_report",
]
