"""What to send for a prompt: the user's choice, validated, then the stream's messages.

    PromptPlan (prompt, PrivacyChoice, Sampling, budget)          validated, no I/O yet
      .prepare(model, bundle):
        bundle.encode, minus BOS (the server prepends a clean one: a public template token)
        bundle.embed (T, k) ─ budget.charge ─ BinomialQuantizer -> (T, k) symbols
                          (raw: the (T, d) float32 embeddings, NOT private)
        header (with the level's id when the user chose a level, and the payload
        encoding: entropy-coded when the server offers it, else packed) + frames + end
                          =  PreparedRequest, built once: resending it spends nothing

A generate call has sampling parameters and a classify call has none; both send the same
messages (GenerateRequests or ClassifyRequests). Nothing here touches the network.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from .budget import Budget
from .bundle import ClientBundle
from .codec import (
    FrameSpec,
    RawSpec,
    encode_frames,
    mechanism_params,
    packed_size,
    payload_encoding,
    tokens_per_frame,
)
from .errors import (
    BudgetExceededError,
    BundleMismatchError,
    LimitExceededError,
    PrivacyParameterError,
    ProtocolError,
    RequestOptionError,
)
from .manifest import LevelUtility, ModelInfo, PrivacyLevel
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
