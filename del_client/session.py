"""The sans-I/O core of both clients: what to send for a prompt, and what the replies mean.

    Manifest ─ ModelInfo ─ which bundle digest ─ BundleDownload (chunks -> verified bundle)
    PromptPlan (prompt, PrivacyChoice, Sampling, budget)          validated, no I/O yet
      .prepare(model, bundle):
        bundle.encode, minus BOS (the server prepends a clean one: a public template token)
        bundle.embed (T, k) ─ budget.charge ─ BinomialQuantizer -> (T, k) symbols
                          (raw: the (T, d) float32 embeddings, NOT private)
        header (with the level's id when the user chose a level, and the payload
        encoding: entropy-coded when the server offers it, else packed) + frames + end
                          =  PreparedRequest, built once: resending it spends nothing
    replies ─ ReplyFolder.feed -> text deltas ─ ReplyFolder.result() -> GenerationResult
    (Classify: the same messages as ClassifyRequests ─ one reply ─ classification.py's result)

Nothing here touches the network. client.py and aio.py only move these messages over a sync
or an asyncio gRPC stub (like httpx's BaseClient under Client and AsyncClient), so the two
clients cannot drift apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Generic, TypeVar

from . import ans
from .budget import Budget
from .bundle import ClientBundle
from .cache import BundleCache, check_digest
from .codec import (
    ENCODINGS,
    FrameSpec,
    RawSpec,
    encode_frames,
    mechanism_params,
    packed_size,
    payload_encoding,
    tokens_per_frame,
)
from .config import ClientConfig
from .errors import (
    BudgetExceededError,
    BundleMismatchError,
    LimitExceededError,
    PrivacyParameterError,
    ProtocolError,
    RequestOptionError,
)
from .mechanism import BinomialQuantizer, PrivacySpec
from .parameters import (
    DEFAULT_BITS,
    DEFAULT_DELTA,
    check_bits,
    check_delta,
    check_mechanism,
    check_positive_finite,
    wire_bytes,
)
from .proto import inference_pb2
from .sampling import Sampling
from .symbol_model import model_for

NOT_PRIVATE = "NO PRIVACY: raw embeddings were sent; the server can read the prompt"
FINISH_REASONS = {
    inference_pb2.FINISH_REASON_LENGTH: "length",
    inference_pb2.FINISH_REASON_STOP: "stop",
    inference_pb2.FINISH_REASON_EOS: "eos",
}
# Final.soft_prompt: whether the server prepended a soft prompt, and why not
SOFT_PROMPT = {
    inference_pb2.SOFT_PROMPT_UNSPECIFIED: "unknown",  # a server older than the field
    inference_pb2.SOFT_PROMPT_USED: "used",
    inference_pb2.SOFT_PROMPT_NO_LEVEL: "no level",
    inference_pb2.SOFT_PROMPT_NOT_TRAINED: "not trained",
    inference_pb2.SOFT_PROMPT_RAW: "raw",
}


# ── What the server serves ──────────────────────────────────────────────────────────────


# AttackRate.attack: the attacks a provider runs against a level, in words
ATTACKS_IN_WORDS = {
    "nearest_neighbour": "nearest neighbour",
    "likelihood": "per-token likelihood",
    "learned": "learned inversion network",
    "bigram_marginal": "likelihood + bigram prior (forward-backward)",
    "bigram_viterbi": "likelihood + bigram prior (Viterbi)",
    "lm_beam": "likelihood + the model as prior (beam search)",
}


@dataclass(frozen=True)
class AttackRate:
    """One attack's success at a level, on the provider's held-out prompts."""

    attack: str
    rate: float  # share of prompt tokens recovered
    low: float  # 95 % interval, clustered by prompt
    high: float
    content_rate: float  # tokens outside the 50 most frequent
    half_prompts: float  # prompts with at least half of their tokens recovered
    exact_prompts: float  # prompts recovered entirely

    @property
    def in_words(self) -> str:
        return ATTACKS_IN_WORDS.get(self.attack, self.attack)


@dataclass(frozen=True)
class LevelUtility:
    """What a level is worth as the server serves it, against sending nothing at all (with a
    soft prompt trained for that case): perfect privacy and no communication. A level that is
    not better than nothing spends privacy for no utility."""

    metric: str  # e.g. "held-out continuation loss (nats/token)"
    value: float  # the level as served, mean over noise seeds
    nothing_sent: float  # the same metric with nothing sent
    higher_is_better: bool
    better_than_nothing: bool  # computed by the server from the figures above
    measured_on: str

    def summary(self) -> str:
        """The comparison in one line, e.g. for `del-client manifest`."""
        verdict = "better than" if self.better_than_nothing else "NOT better than"
        direction = "higher" if self.higher_is_better else "lower"
        return (
            f"{self.metric} {self.value:.3f} against {self.nothing_sent:.3f} with nothing sent "
            f"({direction} is better): {verdict} sending nothing"
        )

    def warning(self, level_id: str) -> str:
        """What a user of a level that is not better than nothing must be told."""
        worse = self.value != self.nothing_sent
        return (
            f"at level {level_id} the server measured {self.metric} {self.value:.3f}, "
            f"{'worse than' if worse else 'no better than'} the {self.nothing_sent:.3f} it gets "
            "with nothing sent: on this model the private prompt does not help"
        )


class HasUtility:
    """A level, or a result served at one, with the level's utility when the server measured it."""

    utility: LevelUtility | None

    @property
    def better_than_nothing(self) -> bool | None:
        """Whether the level beats sending nothing (None: not measured, or no level)."""
        return None if self.utility is None else self.utility.better_than_nothing


@dataclass(frozen=True)
class PrivacyLevel(HasUtility):
    """A level the provider calibrated against token-inversion attacks (advisory), with the
    parameters to send for it; target_attack_rate 0: a soft prompt's level, not calibrated."""

    mu: float
    epsilon_token: float
    delta: float
    bits: int
    target_attack_rate: float
    soft_prompt: bool
    id: str = ""  # StreamHeader.level_id; "" from a server older than level ids
    scale: float = 0.0  # A (0 from an older server: computed from μ)
    clip: float = 0.0
    dim: int = 0
    attacks: tuple[AttackRate, ...] = ()
    strongest_attack: str = ""
    strongest_rate: float = 0.0
    strongest_rate_high: float = 0.0  # 95 % upper bound: the level holds when under target
    prior_alone_rate: float = 0.0  # the best blind guess: no level goes below it
    measured_on: str = ""
    measured_tokens: int = 0
    measured_prompts: int = 0
    utility: LevelUtility | None = None  # None: the server did not measure it

    @property
    def calibrated(self) -> bool:
        return self.target_attack_rate > 0

    def summary(self) -> str:
        """What the level protects, in one sentence a user can read."""
        if not self.calibrated:
            return "not calibrated against any attack: a soft prompt trained at this μ"
        if not self.attacks:  # an adapter calibrated before context-aware attacks existed
            return (
                f"calibrated to {self.target_attack_rate:.0%} token recovery by per-token "
                "attacks only: a server using the language as a prior may recover more"
            )
        strongest = ATTACKS_IN_WORDS.get(self.strongest_attack, self.strongest_attack)
        return (
            f"a server that tries hard recovers about {self.strongest_rate * 100:.0f} of every "
            f"100 prompt tokens (95 % interval up to {self.strongest_rate_high:.1%}; strongest "
            f"attack: {strongest}); with nothing sent it would guess "
            f"{self.prior_alone_rate * 100:.0f} of 100 from the language alone"
        )

    @classmethod
    def from_pb(cls, pb: inference_pb2.PrivacyLevel) -> PrivacyLevel:
        attacks = tuple(
            AttackRate(**{f.name: getattr(a, f.name) for f in fields(AttackRate)})
            for a in pb.attacks
        )
        nested = ("attacks", "utility")
        values = {f.name: getattr(pb, f.name) for f in fields(cls) if f.name not in nested}
        utility = (
            LevelUtility(**{f.name: getattr(pb.utility, f.name) for f in fields(LevelUtility)})
            if pb.HasField("utility")
            else None
        )
        return cls(**values, attacks=attacks, utility=utility)


@dataclass(frozen=True)
class ModelInfo:
    """One served model, its limits, and the digests of the bundles that go with it."""

    model_id: str
    hidden_size: int
    projection_dim: int
    clip: float
    supported_bits: tuple[int, ...]
    soft_prompt_mus: tuple[float, ...]  # privacy levels with a trained soft prompt
    client_bundle_digest: str
    max_prompt_tokens: int
    max_new_tokens: int
    raw_mechanism_enabled: bool
    raw_bundle_digest: str  # "" when raw is off
    privacy_levels: tuple[PrivacyLevel, ...] = ()
    max_frames: int = 0  # 0: not advertised (an older server)
    max_frame_payload_bytes: int = 0  # 0: not advertised
    level_tolerance: float = 0.0  # relative, on A and c: how close a header must be to a level
    bos_id: int | None = None  # the BOS token the server prepends (frames never carry it)
    task: str = "generate"  # "generate" or "classify": which RPC serves this model
    task_name: str = ""  # what a classifier was trained for, e.g. "sst2"
    labels: tuple[str, ...] = ()  # a classifier's labels
    payload_encodings: tuple[str, ...] = ("packed",)  # what the server decodes ("ans": coded)

    @classmethod
    def from_pb(cls, pb: inference_pb2.ModelInfo) -> ModelInfo:
        return cls(
            model_id=pb.model_id,
            hidden_size=pb.hidden_size,
            projection_dim=pb.projection_dim,
            clip=pb.clip,
            supported_bits=tuple(pb.supported_bits),
            soft_prompt_mus=tuple(pb.soft_prompt_mus),
            client_bundle_digest=pb.client_bundle_digest,
            max_prompt_tokens=pb.max_prompt_tokens,
            max_new_tokens=pb.max_new_tokens,
            raw_mechanism_enabled=pb.raw_mechanism_enabled,
            raw_bundle_digest=pb.raw_bundle_digest,
            privacy_levels=tuple(PrivacyLevel.from_pb(level) for level in pb.privacy_levels),
            max_frames=pb.max_frames,
            max_frame_payload_bytes=pb.max_frame_payload_bytes,
            level_tolerance=pb.level_tolerance,
            bos_id=pb.bos_id if pb.HasField("bos_id") else None,
            task="classify" if pb.task == inference_pb2.TASK_CLASSIFY else "generate",
            task_name=pb.task_name,
            labels=tuple(pb.labels),
            payload_encodings=_encoding_names(pb.payload_encodings),
        )

    def check_task(self, task: str) -> None:
        """Refuse, before any privacy is spent, a call for the task this model does not serve."""
        if task != self.task:
            does = {"generate": "generates text", "classify": f"classifies ({self.task_name})"}
            call = {"generate": "generate", "classify": "classify"}
            raise RequestOptionError(
                f"{self.model_id} {does[self.task]}: use {call[self.task]}, not {call[task]} "
                "(nothing was sent, no privacy spent)"
            )

    def level(self, target: float | None) -> PrivacyLevel:
        """The calibrated level for `target` attack rate; None: the most private one."""
        calibrated = [level for level in self.privacy_levels if level.calibrated]
        if not calibrated:
            raise PrivacyParameterError(
                "the server offers no calibrated privacy level: choose one yourself with mu, "
                "epsilon (or --mu/--epsilon), knowing that nothing measured it on this model"
            )
        if target is None:
            return min(calibrated, key=lambda level: level.mu)
        for level in calibrated:
            if abs(level.target_attack_rate - target) < 1e-9:
                return level
        offered = ", ".join(f"{level.target_attack_rate:g}" for level in calibrated)
        raise PrivacyParameterError(
            f"the server has no level calibrated to {target:g} (offered: {offered})"
        )

    def level_of(self, spec: FrameSpec) -> PrivacyLevel | None:
        """The server's level that `spec` is: its k and b, its A and c to the manifest's
        tolerance (as the server matches a header that names no level); None for raw or
        parameters of the client's own."""
        if isinstance(spec, RawSpec):
            return None

        def close(value: float, reference: float) -> bool:
            return abs(value - reference) <= self.level_tolerance * abs(reference)

        return next(
            (
                level
                for level in self.privacy_levels
                if (level.dim, level.bits) == (spec.dim, spec.bits)
                and close(spec.scale, level.scale)
                and close(spec.clip, level.clip)
            ),
            None,
        )

    def payload_encoding(self, wanted: str, spec: FrameSpec, max_payload_bytes: int) -> str:
        """The encoding the frames may use: "ans" when `wanted` allows it, this server decodes
        it and any token's coded payload fits a frame; else "packed" ("ans" wanted: refused)."""
        if isinstance(spec, RawSpec):
            return "packed"  # raw floats: nothing to code
        offered = "ans" in self.payload_encodings
        fits = ans.worst_case_bytes(spec.dim) <= max_payload_bytes
        if wanted == "ans" and not (offered and fits):
            why = "this server does not decode it" if not offered else "frames are too small"
            raise RequestOptionError(
                f"payload_encoding='ans' is not possible here ({why}): use 'auto' or 'packed'"
            )
        return "ans" if wanted != "packed" and offered and fits else "packed"

    def frame_payload_bytes(self, wanted: int) -> int:
        """The frame size to use: the client's choice, capped by what this server accepts."""
        return min(wanted, self.max_frame_payload_bytes or wanted)

    def check_limits(self, *, tokens: int, frames: int, max_new_tokens: int) -> None:
        """Refuse, before any privacy is spent, a request this server would refuse anyway.

        A limit of 0 is one the server did not advertise; the server still enforces its own.
        """
        problems = []
        if self.max_new_tokens and max_new_tokens > self.max_new_tokens:
            problems.append(
                f"max_new_tokens {max_new_tokens} exceeds the server's limit of "
                f"{self.max_new_tokens}"
            )
        if self.max_prompt_tokens and tokens > self.max_prompt_tokens:
            problems.append(
                f"the prompt has {tokens} tokens, over the server's limit of "
                f"{self.max_prompt_tokens}"
            )
        if self.max_frames and frames > self.max_frames:
            problems.append(
                f"the prompt needs {frames} frames, over the server's limit of {self.max_frames}"
            )
        if problems:
            raise LimitExceededError("; ".join(problems) + ": nothing was sent, no privacy spent")

    def bundle_digest(self, mechanism: str) -> str:
        """The digest of the bundle to encode with under `mechanism`."""
        check_mechanism(mechanism)
        if mechanism == "binomial":
            return check_digest(self.client_bundle_digest)
        if not self.raw_mechanism_enabled:
            raise RequestOptionError("this server does not offer the raw (no privacy) mechanism")
        return check_digest(self.raw_bundle_digest)


@dataclass(frozen=True)
class Manifest:
    server_version: str
    models: tuple[ModelInfo, ...]

    @classmethod
    def from_pb(cls, pb: inference_pb2.Manifest) -> Manifest:
        return cls(pb.server_version, tuple(ModelInfo.from_pb(m) for m in pb.models))

    @property
    def model(self) -> ModelInfo:
        """The served model (a server serves exactly one for now)."""
        if len(self.models) != 1:
            raise ProtocolError(f"expected one model in the manifest, got {len(self.models)}")
        return self.models[0]

    def to_dict(self) -> dict:
        return asdict(self)


class BundleDownload:
    """Collects FetchClientBundle chunks in order, then verifies the whole against its digest."""

    def __init__(self, digest: str) -> None:
        self.request = inference_pb2.FetchClientBundleRequest(digest=check_digest(digest))
        self._parts: list[bytes] = []
        self._received = 0
        self._total: int | None = None

    def feed(self, chunk: inference_pb2.BundleChunk) -> None:
        if chunk.offset != self._received:
            raise ProtocolError(f"bundle chunk at offset {chunk.offset}, expected {self._received}")
        if self._total not in (None, chunk.total_size):
            raise ProtocolError("bundle chunks disagree about the total size")
        self._total = chunk.total_size
        self._received += len(chunk.data)
        if self._received > self._total:
            raise ProtocolError(f"bundle stream exceeds its total size of {self._total} bytes")
        self._parts.append(chunk.data)

    def bundle(self) -> ClientBundle:
        if self._total is None or self._received != self._total:
            raise ProtocolError(
                f"bundle stream ended after {self._received} of {self._total or '?'} bytes"
            )
        return ClientBundle.from_bytes(b"".join(self._parts), expected_digest=self.request.digest)


def _encoding_names(values) -> tuple[str, ...]:
    """ModelInfo.payload_encodings by name; packed always (an older server lists none), and
    encodings this client does not know left out."""
    names = {value: name for name, value in ENCODINGS.items()}
    return tuple(dict.fromkeys(["packed", *(names[v] for v in values if v in names)]))


# ── What the user asked for ─────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class PrivacyChoice:
    """How to privatize the prompt: one of μ, (ε, δ), a ready PrivacySpec, or one of the
    server's calibrated levels by its target attack rate; or raw (none).

    With none of them the mechanism is binomial at the server's MOST private level (a client
    never falls back to a privacy constant that was measured on some other model). `bits`
    defaults to the level's, or DEFAULT_BITS. Projection dim and clip come from the bundle.
    `delta` is also the δ at which the result reports ε. At a level of the server (level=,
    or none of them) the header carries the level's own parameters and names its id, which
    gets its soft prompt; with other bits than the level's it is not that level any more.
    """

    mechanism: str = "binomial"
    mu: float | None = None
    epsilon: float | None = None
    spec: PrivacySpec | None = None
    delta: float = DEFAULT_DELTA
    bits: int | None = None
    level: float | None = None  # a target attack rate the manifest offers, e.g. 0.10

    def __post_init__(self) -> None:
        check_mechanism(self.mechanism)
        chosen = ("mu", "epsilon", "spec", "level")
        given = [name for name in chosen if getattr(self, name) is not None]
        if self.mechanism == "raw" and (given or self.bits is not None):
            raise PrivacyParameterError(
                f"the raw mechanism sends unprivatized embeddings: {given or ['bits']} would "
                "have no effect; use mechanism='binomial' for privacy"
            )
        if len(given) > 1:
            raise PrivacyParameterError(f"give one of mu, epsilon, spec or level, got {given}")
        for name in ("mu", "epsilon"):
            if getattr(self, name) is not None:
                check_positive_finite(name, getattr(self, name))
        if self.level is not None and not (
            isinstance(self.level, float | int) and 0 < self.level < 1
        ):
            raise PrivacyParameterError(
                f"level is a target attack rate in (0, 1), e.g. 0.10, got {self.level!r}"
            )
        check_delta(self.delta)
        if self.bits is not None:
            check_bits(self.bits)
            if self.spec is not None and self.spec.bits != self.bits:
                raise PrivacyParameterError(
                    f"bits={self.bits} contradicts the spec's bits={self.spec.bits}"
                )

    def chosen_level(self, model: ModelInfo) -> PrivacyLevel | None:
        """The server's level the user chose (level=, or nothing: the most private), if any."""
        if self.mechanism == "raw" or any(
            value is not None for value in (self.mu, self.epsilon, self.spec)
        ):
            return None
        return model.level(self.level)

    def frame_spec(self, bundle: ClientBundle, model: ModelInfo) -> FrameSpec:
        """The mechanism's public parameters for this bundle's projection dim and clip; at a
        level of the server, exactly the level's (A as the manifest gives it)."""
        if self.mechanism == "raw":
            return RawSpec(dim=bundle.dim)
        if self.spec is not None:
            if self.spec.dim != bundle.projection_dim:
                raise PrivacyParameterError(
                    f"spec has dim {self.spec.dim}, the bundle projects to {bundle.projection_dim}"
                )
            return self.spec
        shape = {"dim": bundle.projection_dim, "clip": bundle.clip}
        if self.epsilon is not None:
            bits = self.bits or DEFAULT_BITS
            return PrivacySpec.from_epsilon(
                epsilon=self.epsilon, delta=self.delta, bits=bits, **shape
            )
        if self.mu is not None:
            return PrivacySpec.from_mu(mu=self.mu, bits=self.bits or DEFAULT_BITS, **shape)
        level = model.level(self.level)
        bits = self.bits or level.bits
        if level.scale and bits == level.bits:
            if (level.dim, level.clip) != (bundle.projection_dim, bundle.clip):
                raise ProtocolError(
                    f"level {level.id} is for dim {level.dim} and clip {level.clip!r}, the bundle "
                    f"has {bundle.projection_dim} and {bundle.clip!r}"
                )
            return PrivacySpec(dim=level.dim, bits=bits, clip=level.clip, scale=level.scale)
        # Another bit width than the level's (or a server without scales): the level's μ.
        return PrivacySpec.from_mu(mu=level.mu, bits=bits, **shape)

    def level_id(self, spec: FrameSpec, model: ModelInfo) -> str:
        """The id to name in the header: the chosen level's, when `spec` is that level."""
        level = self.chosen_level(model)
        if level is None or not level.id or spec.bits != level.bits:
            return ""  # the level at other bits is not the level: its soft prompt does not fit
        return level.id


# ── What goes on the wire ───────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class PreparedRequest:
    """One Generate stream's messages, privatized once: resending them spends no more privacy."""

    request_id: str
    mechanism: str
    # header, frames..., end: GenerateRequests, or ClassifyRequests (the same fields)
    messages: tuple[inference_pb2.GenerateRequest | inference_pb2.ClassifyRequest, ...]
    prompt_tokens: int
    delta: float | None  # None for raw: no guarantee to state
    epsilon_token: float | None
    epsilon_prompt: float | None
    mu_token: float | None
    level: PrivacyLevel | None = None  # the server's level these parameters are, if any

    @property
    def wire_bytes(self) -> int:
        return sum(wire_bytes(m) for m in self.messages)

    def utility(self, served_level_id: str) -> LevelUtility | None:
        """The utility the manifest gave the level the server says it served at, if any."""
        level = self.level
        if level is None or not served_level_id or level.id != served_level_id:
            return None
        return level.utility

    @property
    def privacy_note(self) -> str:
        """What the request kept private, in one sentence."""
        if self.epsilon_prompt is None:
            return NOT_PRIVATE
        return (
            f"ε = {self.epsilon_token:.4g} per token, {self.epsilon_prompt:.4g} for the "
            f"{self.prompt_tokens}-token prompt, at δ = {self.delta:g} (exact); "
            f"μ = {self.mu_token:.4g} per token (the paper's Gaussian-DP figure)"
        )

    @property
    def payload_encoding(self) -> str:
        """How the frames carry the symbols: "packed", or "ans" (entropy-coded)."""
        return payload_encoding(self.messages[0].header.mechanism)


@dataclass(frozen=True)
class PromptPlan:
    """A validated generate (with `sampling`) or classify (without) call; it becomes a
    PreparedRequest once model and bundle are known."""

    prompt: str
    privacy: PrivacyChoice
    sampling: Sampling | None
    budget: Budget | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise RequestOptionError(f"prompt must be a str, got {type(self.prompt).__name__}")
        try:  # a lone surrogate (e.g. undecodable bytes on a command line) is no text to encode
            self.prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestOptionError(
                f"the prompt is not valid Unicode text: {exc.object[exc.start]!r} at character "
                f"{exc.start} is a lone surrogate (bytes that were not UTF-8?)"
            ) from None

    def prepare(
        self,
        model: ModelInfo,
        bundle: ClientBundle,
        *,
        max_payload_bytes: int,
        payload_encoding: str = "auto",
    ) -> PreparedRequest:
        """Tokenize, embed, charge the budget, privatize and frame the prompt (`payload_encoding`:
        "auto" codes the frames when the server decodes them, "packed" never, "ans" always)."""
        if bundle.digest != model.bundle_digest(self.privacy.mechanism):
            raise BundleMismatchError(
                f"bundle {bundle.digest[:16]}… is not the one the manifest names for "
                f"{self.privacy.mechanism!r}: fetch the current bundle"
            )
        model.check_task("generate" if self.sampling else "classify")
        ids = bundle.encode(self.prompt)
        ids = ids[1:] if bundle.bos_id is not None else ids  # the server adds a clean BOS
        if not ids:
            raise RequestOptionError("the prompt has no tokens")
        spec = self.privacy.frame_spec(bundle, model)
        level_id = self.privacy.level_id(spec, model)
        level = model.level_of(spec)
        if self.sampling is None and not (isinstance(spec, RawSpec) or level is not None):
            offered = ", ".join(level.id for level in model.privacy_levels) or "none"
            raise RequestOptionError(
                "the server classifies at its manifest's levels only, each with a head trained "
                f"for its noise (offered: {offered}); these parameters are none of them: "
                "nothing was sent, no privacy spent"
            )
        max_payload_bytes = model.frame_payload_bytes(max_payload_bytes)
        if packed_size(spec.bits_per_token, 1) > max_payload_bytes:
            raise LimitExceededError(
                f"one token takes {packed_size(spec.bits_per_token, 1)} bytes, over the "
                f"frame limit of {max_payload_bytes}: nothing was sent, no privacy spent"
            )
        encoding = model.payload_encoding(payload_encoding, spec, max_payload_bytes)
        per_frame = tokens_per_frame(spec, max_payload_bytes)
        model.check_limits(
            tokens=len(ids),
            frames=-(-len(ids) // per_frame),
            max_new_tokens=self.sampling.max_new_tokens if self.sampling else 0,
        )
        embeddings = bundle.embed(ids)  # (T, k); the raw bundle's table gives (T, d)
        if isinstance(spec, RawSpec):
            if self.budget is not None:
                raise BudgetExceededError(
                    "raw embeddings are not private: no finite budget covers them; nothing was sent"
                )
            data, guarantee = embeddings, (None, None, None, None)
        else:
            if spec.bits not in model.supported_bits:
                raise RequestOptionError(
                    f"bits={spec.bits} is not supported by the server ({model.supported_bits})"
                )
            if self.budget is not None:
                self.budget.charge(spec, tokens=len(ids))
            data = BinomialQuantizer(spec).privatize(embeddings)  # (T, k) uint8
            delta = self.privacy.delta
            guarantee = (
                delta,
                spec.epsilon(delta=delta),
                spec.epsilon(delta=delta, tokens=len(ids)),
                spec.mu(),
            )
        encoding, frames = _framed(
            data, spec, bundle, encoding, payload_encoding, max_payload_bytes
        )
        request_id = uuid.uuid4().hex
        header = inference_pb2.StreamHeader(
            request_id=request_id,
            model=model.model_id,
            mechanism=mechanism_params(spec, encoding),
            sampling=self.sampling.to_pb() if self.sampling else None,
            bundle_digest=bundle.digest,
            level_id=level_id,
        )
        kind = inference_pb2.GenerateRequest if self.sampling else inference_pb2.ClassifyRequest
        messages = (
            kind(header=header),
            *(kind(frame=frame) for frame in frames),
            kind(end=inference_pb2.End()),
        )
        return PreparedRequest(
            request_id, self.privacy.mechanism, messages, len(ids), *guarantee, level=level
        )


def _framed(
    data, spec: FrameSpec, bundle: ClientBundle, encoding: str, wanted: str, max_payload_bytes: int
) -> tuple[str, list]:
    """(encoding, frames) of the prompt's symbols (or raw rows) in `encoding`; with "auto"
    wanted, packed ones when coding would not make them smaller (b = 1, or a prompt of a few
    tokens: the coder's final state costs about 23 bits a frame). Both are functions of the
    symbols alone, so choosing between them costs no privacy."""
    packed = list(encode_frames(data, spec, max_payload_bytes=max_payload_bytes))
    if encoding == "packed":
        return "packed", packed
    model = model_for(bundle, spec)
    coded = list(encode_frames(data, spec, max_payload_bytes=max_payload_bytes, model=model))
    if wanted == "auto" and _payload_bytes(coded) >= _payload_bytes(packed):
        return "packed", packed
    return "ans", coded


def _payload_bytes(frames) -> int:
    return sum(len(frame.payload) for frame in frames)


# ── What came back ──────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Usage:
    """The server's own count of this stream (wire bytes are gRPC messages + 5-byte prefixes).

    Field names are the proto's (del.v1.Usage), so a reply converts field by field.
    """

    prompt_tokens: int
    generated_tokens: int
    wire_bytes_received: int  # by the server: everything the client sent
    wire_bytes_sent: int  # by the server, before its Final
    payload_bits: int  # privatized payload in the frames (packed: no padding; coded: as sent)
    bits_per_token: float  # payload bits per prompt token


@dataclass(frozen=True)
class Timings:
    """Measured by the server."""

    time_to_first_token_s: float  # from the end marker to the first generated token
    total_s: float  # from the header to the Final


@dataclass(frozen=True)
class GenerationResult(HasUtility):
    """A finished generation, what it cost on the wire, and what privacy it kept.

    `private` is False for the raw mechanism: ε is then None, because the server received the
    prompt's embeddings themselves, and `privacy_note` says so in words.
    """

    text: str  # the continuation: every streamed delta, concatenated
    token_ids: tuple[int, ...]
    finish_reason: str  # "length", "stop" or "eos"
    usage: Usage
    timings: Timings
    mechanism: str  # "binomial" or "raw"
    payload_encoding: str  # "packed", or "ans": the frames were entropy-coded
    private: bool
    privacy_note: str
    delta: float | None
    epsilon_token: float | None  # exact, one token replaced, at `delta`
    epsilon_prompt: float | None  # exact, every prompt token replaced, at `delta`
    mu_token: float | None  # the paper's central-limit μ-GDP figure per token
    soft_prompt_mu: float | None  # the level of the soft prompt the server used, if any
    level_id: str  # the server's level the request was served at; "" when none
    soft_prompt: str  # "used", or why not: "no level", "not trained", "raw" ("unknown": old server)
    client_wire_bytes_sent: int  # counted here; equals usage.wire_bytes_received
    request_id: str
    utility: LevelUtility | None = None  # the served level's, as the manifest gave it

    def to_dict(self) -> dict:
        return asdict(self)


class ReplyFolder:
    """Folds one stream's replies into text deltas and, after the Final, a GenerationResult."""

    def __init__(self, request: PreparedRequest) -> None:
        self._request = request
        self._deltas: list[str] = []
        self._ids: list[int] = []
        self._final: inference_pb2.Final | None = None

    @property
    def replied(self) -> bool:
        """Whether any reply arrived: after one, a failed stream is no longer retried."""
        return bool(self._ids or self._deltas) or self._final is not None

    def feed(self, response: inference_pb2.GenerateResponse) -> str:
        """The text delta this reply carries ("" for the Final)."""
        if self._final is not None:
            raise ProtocolError("the server sent a message after its Final")
        kind = response.WhichOneof("kind")
        if kind == "tokens":
            self._ids.extend(response.tokens.token_ids)
            self._deltas.append(response.tokens.text)
            return response.tokens.text
        if kind == "final":
            self._final = response.final
            return ""
        raise ProtocolError(f"unexpected reply: {kind or 'an empty message'}")

    def result(self) -> GenerationResult:
        final, request = self._final, self._request
        if final is None:
            raise ProtocolError("the stream ended without its Final message")
        if final.finish_reason not in FINISH_REASONS:
            raise ProtocolError(f"unknown finish reason {final.finish_reason}")
        return GenerationResult(
            text="".join(self._deltas),
            token_ids=tuple(self._ids),
            finish_reason=FINISH_REASONS[final.finish_reason],
            usage=Usage(**{f.name: getattr(final.usage, f.name) for f in fields(Usage)}),
            timings=Timings(**{f.name: getattr(final.timings, f.name) for f in fields(Timings)}),
            mechanism=request.mechanism,
            payload_encoding=request.payload_encoding,
            private=request.epsilon_prompt is not None,
            privacy_note=request.privacy_note,
            delta=request.delta,
            epsilon_token=request.epsilon_token,
            epsilon_prompt=request.epsilon_prompt,
            mu_token=request.mu_token,
            soft_prompt_mu=final.soft_prompt_mu if final.HasField("soft_prompt_mu") else None,
            level_id=final.level_id,
            soft_prompt=SOFT_PROMPT.get(final.soft_prompt, "unknown"),
            client_wire_bytes_sent=request.wire_bytes,
            request_id=request.request_id,
            utility=request.utility(final.level_id),
        )


# ── What both clients share ─────────────────────────────────────────────────────────────

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
