"""The one settings object both clients take, validated once at construction."""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .parameters import MAX_FRAME_PAYLOAD_BYTES, MAX_MESSAGE_BYTES

# Room for a frame's other fields and the request envelope around the payload: a frame must
# fit one message of MAX_MESSAGE_BYTES (the server keeps gRPC's default unless told otherwise).
_FRAME_OVERHEAD_BYTES = 64


def default_cache_dir() -> Path:
    """$DEL_CACHE_DIR, else ~/.cache/del/bundles: bundles are public, so a shared cache is fine."""
    configured = os.environ.get("DEL_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "del" / "bundles"


LOAD_BALANCING = ("round_robin", "pick_first")
# "auto": frames entropy-coded when the server decodes them (its manifest says so), else packed.
PAYLOAD_ENCODINGS = ("auto", "packed", "ans")


@dataclass(frozen=True)
class ClientConfig:
    """Where the server is and how to talk to it; shared by Client and AsyncClient.

        config = ClientConfig("localhost:50051")
        config = ClientConfig("10.0.0.7:50051", deadline_s=30, bundle_cache_dir="/tmp/bundles")
        with Client(config) as client:
            print(client.generate("Once upon a time", mu=10).collect().text)

        config = ClientConfig("del.example.com:443", tls=True, token=os.environ["DEL_TOKEN"])
        config = ClientConfig("10.0.0.7:50051", root_certificates="ca.pem",
                              client_certificate="me.pem", client_key="me.key")  # mutual TLS

    `deadline_s` bounds each call (a whole generation included, retries too);
    `bundle_cache_dir` holds verified client bundles by digest; `max_payload_bytes` caps the
    packed symbols per frame (the server's advertised limit caps it further).

    TLS is on with `tls=True` (server verified against the system's CAs) or with
    `root_certificates` (a PEM CA file); `client_certificate` + `client_key` add mutual TLS.
    `server_name` is the name to expect in the server's certificate when it is not the
    target's host. `token` goes in every call's `authorization: Bearer` metadata; it is
    refused over plaintext except to a loopback address (a local TLS-terminating sidecar), and
    never shown by repr. A call that fails UNAVAILABLE before anything came back is retried up
    to `retries` times, waiting `retry_backoff_s`, then twice that, ... (with jitter).

    `load_balancing` is gRPC's policy over the addresses the target resolves to: "pick_first"
    (gRPC's default) uses one at a time and reconnects as soon as a call needs it;
    "round_robin" keeps a connection to each and spreads calls across them (every replica
    behind a headless Service), reconnecting to a restarted one after gRPC's backoff.

    `payload_encoding` is how frames carry the symbols: "auto" entropy-codes them (about a
    fifth fewer bits at b = 4) when the server's manifest offers it and packs them otherwise;
    "packed" always packs; "ans" always codes, and refuses a server that cannot decode it.
    """

    target: str  # "host:port" ("[::1]:50051"), "dns:///name:port", "ipv4:a:port,b:port"
    deadline_s: float = 120.0
    bundle_cache_dir: Path = field(default_factory=default_cache_dir)
    max_payload_bytes: int = MAX_FRAME_PAYLOAD_BYTES
    tls: bool = False
    root_certificates: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None
    token: str | None = field(default=None, repr=False)
    retries: int = 3
    retry_backoff_s: float = 0.25
    load_balancing: str = "pick_first"
    payload_encoding: str = "auto"

    def __post_init__(self) -> None:
        _check_target(self.target)
        self._check_transport()
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"retries must be an integer >= 0, got {self.retries!r}")
        if not (
            isinstance(self.retry_backoff_s, int | float)
            and math.isfinite(self.retry_backoff_s)
            and self.retry_backoff_s >= 0
        ):
            raise ConfigError(
                f"retry_backoff_s must be finite and >= 0, got {self.retry_backoff_s!r}"
            )
        if self.load_balancing not in LOAD_BALANCING:
            raise ConfigError(
                f"load_balancing must be one of {', '.join(LOAD_BALANCING)}, "
                f"got {self.load_balancing!r}"
            )
        if self.payload_encoding not in PAYLOAD_ENCODINGS:
            raise ConfigError(
                f"payload_encoding must be one of {', '.join(PAYLOAD_ENCODINGS)}, "
                f"got {self.payload_encoding!r}"
            )
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

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.root_certificates is not None or self.client_certificate is not None

    @property
    def hosts(self) -> tuple[str, ...]:
        """The host of every address in the target (one unless it is an ipv4:/ipv6: list)."""
        return tuple(host for host, _ in _addresses(self.target))

    def _check_transport(self) -> None:
        for name in ("root_certificates", "client_certificate", "client_key"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str | os.PathLike):
                raise ConfigError(f"{name} must be a path to a PEM file, got {value!r}")
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(f"{name}: no such file {str(path)!r}")
            object.__setattr__(self, name, path)
        if (self.client_certificate is None) != (self.client_key is None):
            raise ConfigError("client_certificate and client_key go together (mutual TLS)")
        if self.server_name is not None and not self.uses_tls:
            raise ConfigError("server_name is only checked over TLS: set tls=True too")
        if self.token is None:
            return
        if not isinstance(self.token, str) or not self.token or not self.token.isprintable():
            raise ConfigError("token must be a non-empty string of printable characters")
        if any(c.isspace() for c in self.token):
            raise ConfigError("token must not contain spaces or line breaks")
        outside = [host for host in self.hosts if not _is_loopback(host)]
        if not self.uses_tls and outside:
            raise ConfigError(
                f"a token would travel in plaintext to {outside[0]!r}: use TLS (tls=True or "
                "root_certificates), or reach a TLS-terminating proxy on a loopback address"
            )


TARGET_FORMS = "'host:port', 'dns:///host:port' or 'ipv4:a:port,b:port' (ipv6: likewise)"


def _check_target(target: str) -> None:
    if not isinstance(target, str):
        raise ConfigError(f"target must be one of {TARGET_FORMS}, got {target!r}")
    _addresses(target)


def _addresses(target: str) -> list[tuple[str, int]]:
    """(host, port) of each address gRPC will resolve `target` to, or ConfigError.

    gRPC's name syntax: a bare 'host:port' or 'dns:///host:port' is resolved through DNS (a
    headless Service's name gives every replica); 'ipv4:' and 'ipv6:' list addresses.
    """
    if target.startswith("dns:"):  # dns:host:port, dns:///host:port, dns://resolver/host:port
        name = target.removeprefix("dns:")
        if name.startswith("//"):
            name = name[2:].partition("/")[2]
        return [_address(target, name)]
    _refuse_url(target)
    for scheme, version in (("ipv4:", 4), ("ipv6:", 6)):
        if target.startswith(scheme):
            addresses = [_address(target, a) for a in target.removeprefix(scheme).split(",")]
            for host, _ in addresses:
                if not _is_ip(host, version):
                    raise ConfigError(f"target {target!r}: {host!r} is not an IPv{version} address")
            return addresses
    return [_address(target, target)]


def _refuse_url(target: str) -> None:
    """A URL ('http://host:port') is not a gRPC name: say what to write instead.

    Its scheme cannot simply be dropped: 'https' would have to mean TLS, which is a separate
    setting, so the user decides.
    """
    scheme, sep, rest = target.partition("://")
    if not sep:
        return
    address = rest.partition("/")[0] or "host"
    if not address.rpartition(":")[2].isdigit():
        address += ":PORT"
    tls = " and turn on TLS (tls=True; del-client --tls)" if scheme in ("https", "grpcs") else ""
    raise ConfigError(
        f"target {target!r} is a URL, but gRPC targets take no scheme: write {address!r}{tls}"
    )


def _is_ip(host: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


def _address(target: str, address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"target {target!r}: put an IPv6 address in brackets, e.g. '[::1]:50051'")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"target must look like {TARGET_FORMS} with ports 1..65535, got {target!r}"
        )
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
