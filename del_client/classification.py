"""The sans-I/O side of Classify: a prepared request's one reply, read into a result.

A Classify stream carries what a Generate stream carries (request.PromptPlan without
sampling parameters); the server answers once, with every label's probability.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ProtocolError
from .proto import inference_pb2
from .request import PreparedRequest
from .results import Receipt


@dataclass(frozen=True)
class ClassificationResult(Receipt):
    """A classified prompt, what it cost on the wire, and what privacy it kept (timings'
    time_to_first_token_s: from the end marker to the answer)."""

    label: str  # the most probable label
    probabilities: dict[str, float]  # every label's, in the manifest's order


def classification_result(
    request: PreparedRequest, response: inference_pb2.ClassifyResponse
) -> ClassificationResult:
    probabilities = {p.label: p.probability for p in response.probabilities}
    if response.label not in probabilities:
        raise ProtocolError(f"the answered label {response.label!r} has no probability")
    return ClassificationResult.from_reply(
        request, response, label=response.label, probabilities=probabilities
    )
