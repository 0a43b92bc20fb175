"""Sampling options: part of the wire contract, so both sides validate them with this one
class. The client checks them before any privacy is spent; the server checks what arrives."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import RequestOptionError
from .proto import inference_pb2


@dataclass(frozen=True)
class Sampling:
    """Sampling options, checked before any privacy is spent. temperature 0 is greedy."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # One string is one stop sequence, not a sequence of one-character stops.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        problems = []
        if not _is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens < 2**32:
            problems.append(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )
        if not _is_number(self.temperature) or not self.temperature >= 0:
            problems.append(f"temperature must be finite and >= 0, got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or not 0 <= self.top_k < 2**32:
            problems.append(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**64):
            problems.append(f"seed must be None or an integer in [0, 2**64), got {self.seed!r}")
        if not all(isinstance(s, str) and s for s in stop):
            problems.append(f"stop sequences must be non-empty strings, got {stop!r}")
        if problems:
            raise RequestOptionError("; ".join(problems))

    def to_pb(self) -> inference_pb2.SamplingParams:
        return inference_pb2.SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
