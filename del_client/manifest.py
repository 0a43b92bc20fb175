"""What a server serves, as its manifest says: the model, its limits, its privacy levels (with
what measured them and what they are worth), and the bundle to encode prompts with.

    Manifest ─ ModelInfo ─ PrivacyLevel (AttackRate, LevelUtility)
                         ─ which bundle digest ─ BundleDownload (chunks -> verified bundle)

ModelInfo also answers the questions a request asks of the server before anything is sent:
which level a target attack rate means, which level some parameters are, which payload
encoding and frame size to use, and whether the request is within the server's limits.
Nothing here touches the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from . import ans
from .bundle import ClientBundle
from .cache import check_digest
from .codec import ENCODINGS, FrameSpec, RawSpec
from .errors import LimitExceededError, PrivacyParameterError, ProtocolError, RequestOptionError
from .parameters import check_mechanism
from .proto import inference_pb2

# AttackRate.attack: the attacks a provider runs against a level, in words
ATTACKS_IN_WORDS = {
    "nearest_neighbour": "nearest neighbour",
    "likelihood": "per-token likelihood",
    "learned": "learned inversion network",
    "bigram_marginal": "likelihood + bigram prior (forward-backward)",
    "bigram_viterbi": "likelihood + bigram prior (Viterbi)",
    "trigram_marginal": "likelihood + trigram prior (forward-backward)",
    "lm_beam": "likelihood + the model as prior (beam search)",
    "lm_filter": "likelihood + the model as prior (particle filter)",
    "lm_smoother": "likelihood + the model as prior (particle smoother)",
}


# PromptReading: how a server reads a private prompt (the manifest's, and each Final's)
READING = {
    inference_pb2.PROMPT_READING_UNSPECIFIED: "unknown",  # a server older than the field
    inference_pb2.PROMPT_READING_FRONT_END: "front end",
    inference_pb2.PROMPT_READING_PARTICLE: "particle",
    inference_pb2.PROMPT_READING_IGNORED: "ignored",
    inference_pb2.PROMPT_READING_RAW: "raw",
}


def percent(rate: float) -> str:
    """A level's target as its label says it: 5%, 7.5%, 20% (`:.0%` would print 7.5 % as 8%)."""
    return f"{100 * rate:g}%"


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
    better_than_nothing: bool  # computed by the server from the figures above and the margin
    measured_on: str
    margin: float = 0.0  # 95 % half-width of value − nothing_sent; 0: not measured

    @property
    def _nominally_better(self) -> bool:
        """The figures alone, without the server's margin for their sampling error."""
        if self.higher_is_better:
            return self.value > self.nothing_sent
        return self.value < self.nothing_sent

    def summary(self) -> str:
        """The comparison in one line, e.g. for `del-client manifest`."""
        verdict = "better than" if self.better_than_nothing else "NOT better than"
        direction = "higher" if self.higher_is_better else "lower"
        margin = f", ± {self.margin:.3f}" if self.margin else ""
        if self.better_than_nothing:
            error = f" (beyond its sampling error{margin})" if self.margin else ""
        else:
            error = f" (within its sampling error{margin})" if self._nominally_better else ""
        return (
            f"{self.metric} {self.value:.3f} against {self.nothing_sent:.3f} with nothing sent "
            f"({direction} is better): {verdict} sending nothing{error}"
        )

    def warning(self, level_id: str) -> str:
        """What a user of a level that is not better than nothing must be told."""
        if self._nominally_better:
            relation = "within its sampling error of"
        elif self.value != self.nothing_sent:
            relation = "worse than"
        else:
            relation = "no better than"
        return (
            f"at level {level_id} the server measured {self.metric} {self.value:.3f}, "
            f"{relation} the {self.nothing_sent:.3f} it gets with nothing sent: on this model "
            "the private prompt does not help"
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
    ignore_probability: float = 0.0  # a particle reader leaves this share of prompts unread

    @property
    def calibrated(self) -> bool:
        return self.target_attack_rate > 0

    def summary(self) -> str:
        """What the level protects, in one sentence a user can read."""
        if not self.calibrated:
            return "not calibrated against any attack: a soft prompt trained at this μ"
        if not self.attacks:  # an adapter calibrated before context-aware attacks existed
            return (
                f"calibrated to {percent(self.target_attack_rate)} token recovery by per-token "
                "attacks only: a server using the language as a prior may recover more"
            )
        strongest = ATTACKS_IN_WORDS.get(self.strongest_attack, self.strongest_attack)
        return (
            f"a server that tries hard recovers about {self.strongest_rate * 100:.0f} of every "
            f"100 prompt tokens (95 % interval up to {self.strongest_rate_high:.2%}; strongest "
            f"attack: {strongest}); with nothing sent it would guess "
            f"{self.prior_alone_rate * 100:.0f} of 100 from the language alone"
        )

    def unread_summary(self) -> str | None:
        """How often the server's particle reader leaves this level's prompts unread, in words
        (None: it reads every one)."""
        if not self.ignore_probability:
            return None
        return (
            f"prompt left unread {self.ignore_probability:.0%} of the time: the reader then "
            "continues from its own prefix alone"
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
    prompt_reading: str = "unknown"  # READING's word: "particle", "front end"; "unknown": older
    reader_particles: int = 0  # the particle reader's particles per prompt; 0: none

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
            prompt_reading=READING.get(pb.prompt_reading, "unknown"),
            reader_particles=pb.reader_particles,
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
