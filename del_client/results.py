"""What came back: a Generate stream's replies folded into text deltas and a result.

    replies ─ ReplyFolder.feed -> text deltas ─ ReplyFolder.result() -> GenerationResult

Every result is a Receipt: what the request kept private and what it cost, from the prepared
request and the server's usage and timings. (Classify's one reply is read into its
ClassificationResult by classification.py.) Nothing here touches the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Self

from .errors import ProtocolError
from .manifest import READING, HasUtility, LevelUtility
from .proto import inference_pb2
from .request import PreparedRequest

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
    inference_pb2.SOFT_PROMPT_READER: "reader",
}


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


@dataclass(frozen=True, kw_only=True)
class Receipt(HasUtility):
    """What a request kept private and what it cost: the part of every result (generation or
    classification) that the prepared request and the server's reply give alike.

    `private` is False for the raw mechanism: ε is then None, because the server received the
    prompt's embeddings themselves, and `privacy_note` says so in words.
    """

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
    level_id: str  # the server's level the request was served at; "" when none
    # "used", or why not: "no level", "not trained", "raw", "reader" (the particle reader's
    # prefix instead); "unknown": an older server
    soft_prompt: str
    client_wire_bytes_sent: int  # counted here; equals usage.wire_bytes_received
    request_id: str
    utility: LevelUtility | None = None  # the served level's, as the manifest gave it

    @classmethod
    def from_reply(cls, request: PreparedRequest, reply, **own) -> Self:
        """The result with its `own` fields, the rest read from `request` and from `reply`: a
        Final or a ClassifyResponse, whose usage, timings, level_id and soft_prompt fields
        are the same."""
        return cls(
            **own,
            usage=Usage(**{f.name: getattr(reply.usage, f.name) for f in fields(Usage)}),
            timings=Timings(**{f.name: getattr(reply.timings, f.name) for f in fields(Timings)}),
            mechanism=request.mechanism,
            payload_encoding=request.payload_encoding,
            private=request.epsilon_prompt is not None,
            privacy_note=request.privacy_note,
            delta=request.delta,
            epsilon_token=request.epsilon_token,
            epsilon_prompt=request.epsilon_prompt,
            mu_token=request.mu_token,
            level_id=reply.level_id,
            soft_prompt=SOFT_PROMPT.get(reply.soft_prompt, "unknown"),
            client_wire_bytes_sent=request.wire_bytes,
            request_id=request.request_id,
            utility=request.utility(reply.level_id),
        )

    def to_dict(self) -> dict:
        """Every field, the result's own (text, label, ...) first."""
        record = asdict(self)
        shared = [f.name for f in fields(Receipt)]
        own = {name: value for name, value in record.items() if name not in shared}
        return own | {name: record[name] for name in shared}


@dataclass(frozen=True)
class GenerationResult(Receipt):
    """A finished generation, what it cost on the wire, and what privacy it kept."""

    text: str  # the continuation: every streamed delta, concatenated
    token_ids: tuple[int, ...]
    finish_reason: str  # "length", "stop" or "eos"
    soft_prompt_mu: float | None  # the level of the soft prompt the server used, if any
    # How the server read the prompt: "front end", "particle" (one draw of its posterior, as
    # tokens), "ignored" (the particle reader continued without it), "raw"; "unknown": older
    reading: str


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
        return GenerationResult.from_reply(
            request,
            final,
            text="".join(self._deltas),
            token_ids=tuple(self._ids),
            finish_reason=FINISH_REASONS[final.finish_reason],
            soft_prompt_mu=final.soft_prompt_mu if final.HasField("soft_prompt_mu") else None,
            reading=READING.get(final.reading, "unknown"),
        )
