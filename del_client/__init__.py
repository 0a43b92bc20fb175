"""DEL client: private, low-bandwidth split inference without torch.

    from del_client import PrivacySpec, BinomialQuantizer, privacy_report

The client turns tokens into projected embeddings (ClientBundle), privatizes them with a
differentially private stochastic quantizer (BinomialQuantizer), accounts for the privacy
spent exactly (accountant, PrivacyBudget) and bit-packs the symbols into frames (codec).
"""

from .budget import PrivacyBudget
from .bundle import ClientBundle
from .errors import (
    BudgetExceededError,
    BundleError,
    BundleMismatchError,
    DELError,
    EmbeddingInputError,
    FrameError,
    PrivacyParameterError,
)
from .mechanism import BinomialQuantizer, PrivacySpec, dequantize
from .privacy import PrivacyReport, privacy_report

__all__ = [
    "BinomialQuantizer",
    "BudgetExceededError",
    "BundleError",
    "BundleMismatchError",
    "ClientBundle",
    "DELError",
    "EmbeddingInputError",
    "FrameError",
    "PrivacyBudget",
    "PrivacyParameterError",
    "PrivacyReport",
    "PrivacySpec",
    "dequantize",
    "privacy_report",
]
