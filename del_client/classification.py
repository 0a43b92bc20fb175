"""The sans-I/O side of Classify: a prepared request's one reply, read into a result.

A Classify stream carries what a Generate stream carries (request.PromptPlan without
sampling parameters); the server answers once, with every label's probability.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import ProtocolError
from .manifest import HasUtility, LevelUtility
from .proto import inference_pb2
from .request import PreparedRequest
from .results import SOFT_PROMPT, Timings, Usage


@dataclass(frozen=True)
class ClassificationResult(HasUtility):
    """A classified prompt, what it cost on the wire, and what privacy it kept.

    `private` is False for the raw mechanism: ε is then None (see GenerationResult).
    """

    label: str  # the most probable label
    probabilities: dict[str, float]  # every label's, in the manifest's order
    usage: Usage
    timings: Timings  # time_to_first_token_s: from the end marker to the answer
    mechanism: str
    payload_encoding: str  # "packed", or "ans": the frames were entropy-coded
    private: bool
    privacy_note: str
    delta: float | None
    epsilon_token: float | None
    epsilon_prompt: float | None
    mu_token: float | None
    level_id: str
    soft_prompt: str
    client_wire_bytes_sent: int
    request_id: str
    utility: LevelUtility | None = None  # the served level's, as the manifest gave it

    def to_dict(self) -> dict:
        return asdict(self)


def classification_result(
    request: PreparedRequest, response: inference_pb2.ClassifyResponse
) -> ClassificationResult:
    probabilities = {p.label: p.probability for p in response.probabilities}
    if response.label not in probabilities:
        raise ProtocolError(f"the answered label {response.label!r} has no probability")
    return ClassificationResult(
        label=response.label,
        probabilities=probabilities,
        usage=Usage(**{f.name: getattr(response.usage, f.name) for f in fields(Usage)}),
        timings=Timings(**{f.name: getattr(response.timings, f.name) for f in fields(Timings)}),
        mechanism=request.mechanism,
        payload_encoding=request.payload_encoding,
        private=request.epsilon_prompt is not None,
        privacy_note=request.privacy_note,
        delta=request.delta,
        epsilon_token=request.epsilon_token,
        epsilon_prompt=request.epsilon_prompt,
        mu_token=request.mu_token,
        level_id=response.level_id,
        soft_prompt=SOFT_PROMPT.get(response.soft_prompt, "unknown"),
        client_wire_bytes_sent=request.wire_bytes,
        request_id=request.request_id,
        utility=request.utility(response.level_id),
    )
