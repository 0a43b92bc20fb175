"""What both clients share: configuration, the bundle cache, the latest manifest, and the
generate() and classify() signatures, over the sans-I/O core.

    manifest.py      Manifest ─ ModelInfo ─ PrivacyLevel; BundleDownload
    request.py       PromptPlan (PrivacyChoice, Sampling, budget) ─ .prepare ─ PreparedRequest
    results.py       replies ─ ReplyFolder -> text deltas, GenerationResult (a Receipt)
    classification.py  Classify's one reply -> ClassificationResult

None of those touches the network. client.py and aio.py only move their messages over a sync
or an asyncio gRPC stub (like httpx's BaseClient under Client and AsyncClient), so the two
clients cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .budget import Budget
from .bundle import ClientBundle
from .cache import BundleCache
from .config import ClientConfig
from .manifest import Manifest, ModelInfo
from .mechanism import PrivacySpec
from .parameters import DEFAULT_DELTA
from .request import PreparedRequest, PrivacyChoice, PromptPlan
from .results import GenerationResult
from .sampling import Sampling

GenerationT = TypeVar("GenerationT")
ClassificationT = TypeVar("ClassificationT")


class BaseClient(Generic[GenerationT, ClassificationT]):
    """Configuration, bundle cache, the latest manifest, and the generate() and classify()
    signatures.

    Subclasses only move bytes: `_generation(plan)` returns their lazy Generation object,
    `_classification(plan)` the result (or, asyncio, an awaitable of it).
    """

    def __init__(self, config: ClientConfig) -> None:
        if not isinstance(config, ClientConfig):
            raise TypeError(f"expected a ClientConfig, got {type(config).__name__}")
        self.config = config
        self._cache = BundleCache(config.bundle_cache_dir)
        self._manifest: Manifest | None = None

    def generate(
        self,
        prompt: str,
        *,
        mu: float | None = None,
        epsilon: float | None = None,
        delta: float = DEFAULT_DELTA,
        bits: int | None = None,
        privacy: PrivacySpec | None = None,
        level: float | None = None,
        mechanism: str = "binomial",
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: tuple[str, ...] | list[str] | str = (),
        budget: Budget | None = None,
    ) -> GenerationT:
        """Stream a continuation of `prompt`, privatized on this device.

        Privacy: `mu` (per-token Gaussian-DP, the paper's knob), or `epsilon` at `delta`
        (exact), or a ready `privacy` spec, or `level`: the server's level calibrated to that
        target attack rate (its μ and bits); none of them means the server's most private
        level. `bits` per coordinate defaults to the level's, else 4. mechanism="raw" sends plain embeddings: NO privacy.
        `budget` is charged once, before anything is sent (BudgetExceededError otherwise).
        Options are checked now; the manifest, bundle and stream are touched on iteration.
        """
        plan = PromptPlan(
            prompt=prompt,
            privacy=PrivacyChoice(mechanism, mu, epsilon, privacy, delta, bits, level),
            sampling=Sampling(max_new_tokens, temperature, top_p, top_k, seed, stop),
            budget=budget,
        )
        return self._generation(plan)

    def classify(
        self,
        prompt: str,
        *,
        mu: float | None = None,
        epsilon: float | None = None,
        delta: float = DEFAULT_DELTA,
        bits: int | None = None,
        privacy: PrivacySpec | None = None,
        level: float | None = None,
        mechanism: str = "binomial",
        budget: Budget | None = None,
    ) -> ClassificationT:
        """Classify `prompt` (a server whose model classifies), privatized on this device.

        Privacy as for generate(); the server classifies only at its manifest's levels (each
        has a head trained for its noise), so choose one with `level` (None: the most private).
        Returns a ClassificationResult (the asyncio client: awaitable).
        """
        plan = PromptPlan(
            prompt=prompt,
            privacy=PrivacyChoice(mechanism, mu, epsilon, privacy, delta, bits, level),
            sampling=None,
            budget=budget,
        )
        return self._classification(plan)

    def _generation(self, plan: PromptPlan) -> GenerationT:
        raise NotImplementedError

    def _classification(self, plan: PromptPlan) -> ClassificationT:
        raise NotImplementedError

    def _prepare(self, plan: PromptPlan, model: ModelInfo, bundle: ClientBundle) -> PreparedRequest:
        return plan.prepare(
            model,
            bundle,
            max_payload_bytes=self.config.max_payload_bytes,
            payload_encoding=self.config.payload_encoding,
        )


class BaseGeneration:
    """The state both Generation classes share: streamed once, then a result."""

    def __init__(self, prepare: Callable) -> None:
        self._prepare = prepare  # () -> PreparedRequest (sync) or an awaitable of one
        self._started = False
        self._stopped = False
        self._result: GenerationResult | None = None

    @property
    def result(self) -> GenerationResult:
        """The finished generation; available once the stream has been read to its end."""
        if self._result is None:
            reason = "it was stopped early" if self._stopped else "read the stream to its end"
            raise RuntimeError(f"no result: {reason} (or call collect())")
        return self._result

    def _begin(self) -> None:
        if self._started:
            raise RuntimeError("a generation streams once; call generate() again for another")
        self._started = True
