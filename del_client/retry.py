"""When a failed call may be sent again, and how long to wait first; no I/O here.

Only UNAVAILABLE before any reply is retried: the server, or the path to it, failed before
producing anything, so a second attempt cannot duplicate output the caller has already seen.
A Generate retry resends the same PreparedRequest, the very frames privatized once: a copy of
noise the server may already hold tells it nothing new (post-processing), so the budget is
charged once. Fresh noise on a retry would be a second release, and would cost privacy again.

Waits grow as backoff_s, 2·backoff_s, 4·backoff_s, ... (at most max_backoff_s), each scaled
by a random factor in [0.5, 1] so that clients cut off together do not return together, and
every attempt shares one deadline: no retry starts that could not finish in time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from .config import ClientConfig

RETRYABLE = grpc.StatusCode.UNAVAILABLE


@dataclass
class Attempts:
    """The retry state of one call: its deadline, and the attempts it has left."""

    retries: int
    backoff_s: float
    deadline: float  # on `clock`'s scale
    max_backoff_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    jitter: Callable[[], float] = field(default=lambda: random.uniform(0.5, 1.0))
    made: int = 1  # the first attempt is being made

    @classmethod
    def start(cls, config: ClientConfig, **overrides) -> Attempts:
        clock = overrides.get("clock", time.monotonic)
        return cls(
            retries=config.retries,
            backoff_s=config.retry_backoff_s,
            deadline=clock() + config.deadline_s,
            **overrides,
        )

    def timeout(self) -> float:
        """Seconds the current attempt may take: what is left of the call's deadline."""
        return max(0.0, self.deadline - self.clock())

    def after(self, error: grpc.RpcError, *, replied: bool) -> float | None:
        """Seconds to wait before the next attempt, or None: give up and raise `error`."""
        code = error.code() if callable(getattr(error, "code", None)) else None
        if code != RETRYABLE or replied or self.made > self.retries:
            return None
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (self.made - 1)) * self.jitter()
        if delay >= self.timeout():
            return None
        self.made += 1
        return delay
