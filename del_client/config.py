"""The one settings object both clients take, validated once at construction."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .codec import MAX_FRAME_PAYLOAD_BYTES
from .errors import ConfigError

# gRPC's default per-message limit, which the server keeps unless told otherwise: a frame
# carrying more payload than this would be refused, whatever the client wants.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Room for a frame's other fields and the request envelope around the payload.
_FRAME_OVERHEAD_BYTES = 64


def default_cache_dir() -> Path:
    """$DEL_CACHE_DIR, else ~/.cache/del/bundles: bundles are public, so a shared cache is fine."""
    configured = os.environ.get("DEL_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "del" / "bundles"


@dataclass(frozen=True)
class ClientConfig:
    """Where the server is and how to talk to it; shared by Client and AsyncClient.

        config = ClientConfig("localhost:50051")
        config = ClientConfig("10.0.0.7:50051", deadline_s=30, bundle_cache_dir="/tmp/bundles")
        with Client(config) as client:
            print(client.generate("Once upon a time", mu=10).collect().text)

    `deadline_s` bounds each call (a whole generation included); `bundle_cache_dir` holds
    verified client bundles by digest; `max_payload_bytes` caps the packed symbols per frame.
    The connection is plaintext for now: TLS and credentials will be added here.
    """

    target: str  # "host:port"; IPv6 hosts in brackets: "[::1]:50051"
    deadline_s: float = 120.0
    bundle_cache_dir: Path = field(default_factory=default_cache_dir)
    max_payload_bytes: int = MAX_FRAME_PAYLOAD_BYTES

    def __post_init__(self) -> None:
        _check_target(self.target)
        if isinstance(self.deadline_s, bool) or not isinstance(self.deadline_s, int | float):
            raise ConfigError(f"deadline_s must be a number of seconds, got {self.deadline_s!r}")
        if not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise ConfigError(f"deadline_s must be finite and > 0, got {self.deadline_s!r}")
        if not isinstance(self.bundle_cache_dir, str | os.PathLike):
            raise ConfigError(f"bundle_cache_dir must be a path, got {self.bundle_cache_dir!r}")
        object.__setattr__(self, "bundle_cache_dir", Path(self.bundle_cache_dir).expanduser())
        largest = MAX_MESSAGE_BYTES - _FRAME_OVERHEAD_BYTES
        if (
            isinstance(self.max_payload_bytes, bool)
            or not isinstance(self.max_payload_bytes, int)
            or not 1 <= self.max_payload_bytes <= largest
        ):
            raise ConfigError(
                f"max_payload_bytes must be an integer in 1..{largest} (a frame must fit one "
                f"gRPC message), got {self.max_payload_bytes!r}"
            )


def _check_target(target: str) -> None:
    if not isinstance(target, str):
        raise ConfigError(f"target must be a 'host:port' string, got {target!r}")
    host, sep, port = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"target {target!r}: put an IPv6 address in brackets, e.g. '[::1]:50051'")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"target must look like 'host:port' with port 1..65535, got {target!r}")
