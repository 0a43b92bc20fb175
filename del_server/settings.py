"""Every server setting in one frozen object: flag > DEL_* environment variable > default.

Resolved once at start-up, validated in __post_init__, logged once with secrets redacted, and
passed explicitly to whatever needs it. Each field's help is its --help line.
`check_files` and `check_ports` find what the settings name but the machine lacks (a file, a
free port) before the model loads, which may take minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from del_client.parameters import (
    DEFAULT_DELTA,
    MAX_FRAME_PAYLOAD_BYTES,
    MAX_MESSAGE_BYTES,
    is_delta,
)

# The reference data of the quick start: shared/ beside the repository, wherever a command
# starts (the model, and the text the provider pipeline trains and evaluates on).
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_MODEL = str(SHARED_DIR / "models" / "stories260K")
# The trained adapter of the default model, shipped with the package.
DEFAULT_ADAPTER = str(Path(__file__).resolve().parent / "adapters" / "stories260K")
# The trained classification adapter of all-MiniLM-L6-v2 for SST-2 sentiment, shipped too.
DEFAULT_NLU_ADAPTER = str(Path(__file__).resolve().parent / "adapters" / "minilm-sst2")
PORTS = ("port", "metrics_port", "health_port")


class DType(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def flag(name: str) -> str:
    """The command-line flag of a setting: --max-new-tokens for max_new_tokens."""
    return "--" + name.replace("_", "-")


class SettingError(ValueError):
    """A setting that cannot work. `describe` writes the text given how to name a setting:
    str() names the field (max_running), for_operator() the flag (--max-running)."""

    def __init__(self, describe: Callable[[Callable[[str], str]], str]) -> None:
        super().__init__(describe(str))
        self._describe = describe

    def for_operator(self) -> str:
        return self._describe(flag)


def doc(help: str, **metadata: Any) -> dict[str, Any]:
    """A field's metadata with its --help line."""
    return {"help": help, **metadata}


@dataclass(frozen=True)
class Settings:
    # What to serve.
    model: str = field(
        default=DEFAULT_MODEL,
        metadata=doc("llama2.c directory or .bin file, Hugging Face directory, or hub id"),
    )
    model_format: str = field(default="auto", metadata=doc("auto (detect), llama2c or hf"))
    adapter: str | None = field(
        default=None,
        metadata=doc(
            "trained adapter directory; unset: a training-free PCA projection, no soft prompts"
        ),
    )
    projection_dim: int = field(
        default=16, metadata=doc("k of the PCA projection (ignored with --adapter)")
    )
    dtype: DType = field(default=DType.float32, metadata=doc("dtype of the model's weights"))
    # Where.
    host: str = field(
        default="127.0.0.1", metadata=doc("address every port listens on (0.0.0.0: all interfaces)")
    )
    port: int = field(default=50051, metadata=doc("gRPC port; 0 picks a free one"))
    metrics_port: int = field(
        default=9400, metadata=doc("Prometheus /metrics port; 0 picks a free one, -1 serves none")
    )
    # Plaintext grpc.health.v1 and nothing else, for probes that cannot speak TLS (the kubelet's).
    health_port: int = field(
        default=-1, metadata=doc("plaintext health-only port; 0 picks a free one, -1 serves none")
    )
    # Limits.
    max_prompt_tokens: int = field(default=512, metadata=doc("longest prompt accepted, in tokens"))
    max_new_tokens: int = field(
        default=256, metadata=doc("the most new tokens a request may ask for")
    )
    default_new_tokens: int = field(
        default=64, metadata=doc("new tokens for a request that asks for 0")
    )
    max_running: int = field(
        default=16,
        metadata=doc(
            "sequences the engine advances together (classification: prompts per forward pass)"
        ),
    )
    max_waiting: int = field(
        default=64,
        metadata=doc("requests queued beyond --max-running; more get RESOURCE_EXHAUSTED"),
    )
    max_reading: int = field(
        default=2,
        metadata=doc(
            "prompts built at once for the engine (a particle reader's read holds its "
            "particles' cache: about 2 GB for a 512-token prompt at 1,024 particles); more "
            "wait their turn"
        ),
    )
    engine_process: bool = field(
        default=False,
        metadata=doc(
            "run the engine in a process of its own, so the model never waits for gRPC's "
            "share of the GIL (the model is loaded a second time there)"
        ),
    )
    join_wait_ms: float = field(
        default=0.0,
        metadata=doc(
            "while others decode, a new request waits up to this long to share its prefill "
            "pass with requests arriving after it (an idle engine prefills at once)"
        ),
    )
    # A gRPC message costs the server ~0.1 ms of CPU whatever it carries: at 50 ms, 32 streams
    # send a fifth as many (bench: 1,700 -> 2,400 tokens/s) and text still comes 20 times a second.
    stream_interval_ms: float = field(
        default=50.0,
        metadata=doc(
            "a running stream gets its new tokens at most this often, several to a message "
            "(first tokens and ends at once); 0: every token as it is made"
        ),
    )
    max_message_bytes: int = field(
        default=MAX_MESSAGE_BYTES, metadata=doc("largest gRPC message received or sent")
    )
    max_frames: int = field(default=512, metadata=doc("frames in one Generate stream"))
    max_frame_bytes: int = field(
        default=MAX_FRAME_PAYLOAD_BYTES,
        metadata=doc("payload bytes in one frame (the client's default frame size)"),
    )
    idle_timeout_s: float = field(
        default=30.0, metadata=doc("longest wait for a client's next message before its end marker")
    )
    max_request_s: float = field(
        default=300.0,
        metadata=doc("a Generate stream's whole life, whatever deadline the client set"),
    )
    # Security (SECURITY.md). TLS when tls_cert and tls_key are set, mutual TLS when
    # tls_client_ca is set too; the files are re-read when they change (rotation, no restart).
    tls_cert: str | None = field(
        default=None, metadata=doc("PEM certificate chain of the server: TLS (with --tls-key)")
    )
    tls_key: str | None = field(default=None, metadata=doc("PEM private key of --tls-cert"))
    tls_client_ca: str | None = field(
        default=None,
        metadata=doc("PEM CA bundle: mutual TLS, clients need a certificate it signed"),
    )
    auth_tokens_file: str | None = field(
        default=None, metadata=doc("bearer tokens, one a line; re-read when it changes")
    )
    # Bearer tokens, comma-separated: DEL_AUTH_TOKENS only (a flag would show in `ps`).
    auth_tokens: str | None = field(
        default=None,
        repr=False,
        metadata=doc("bearer tokens, comma-separated", secret=True, env_only=True),
    )
    # Behaviour.
    enable_raw: bool = field(
        default=False,
        metadata=doc("also offer the raw float32 baseline: NO privacy (labelled everywhere)"),
    )
    report_delta: float = field(
        default=DEFAULT_DELTA, metadata=doc("δ at which the ε-per-prompt metric is computed")
    )
    grace_s: float = field(
        default=10.0, metadata=doc("on SIGTERM, how long in-flight streams may finish")
    )
    # Connections. A client keeps one HTTP/2 connection and sends every stream over it, so a
    # replica added by a scale-out gets no traffic until clients reconnect: a finite
    # max_connection_age makes them reconnect and re-resolve (deploy/README.md).
    keepalive_time_s: float = field(
        default=60.0, metadata=doc("ping an idle connection this often to find dead peers")
    )
    keepalive_timeout_s: float = field(
        default=20.0, metadata=doc("close a connection whose ping goes unanswered this long")
    )
    max_connection_age_s: float = field(
        default=0.0,
        metadata=doc(
            "GOAWAY to a connection this old (±10 % jitter), so clients re-resolve; 0: never"
        ),
    )
    max_connection_age_grace_s: float = field(
        default=60.0, metadata=doc("streams still open at that GOAWAY may finish this long")
    )
    log_level: str = field(
        default="INFO", metadata=doc("DEBUG, INFO, WARNING or ERROR (JSON lines on stderr)")
    )

    def __post_init__(self) -> None:
        positive = ["max_prompt_tokens", "max_new_tokens", "default_new_tokens", "max_running"]
        positive += ["max_waiting", "max_reading", "max_message_bytes", "projection_dim"]
        for name in positive:
            _at_least(self, name, 1)
        if self.default_new_tokens > self.max_new_tokens:
            raise SettingError(
                lambda n: f"{n('default_new_tokens')} must not exceed {n('max_new_tokens')}"
            )
        for name in ("keepalive_time_s", "keepalive_timeout_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise _invalid(name, "must be > 0 and finite", getattr(self, name))
        for name in (
            "grace_s",
            "max_connection_age_s",
            "max_connection_age_grace_s",
            "stream_interval_ms",
            "join_wait_ms",
        ):
            if not 0 <= getattr(self, name) < math.inf:
                raise _invalid(name, "must be >= 0 and finite", getattr(self, name))
        if not is_delta(self.report_delta):
            raise _invalid("report_delta", "must lie in (0, 1)", self.report_delta)
        if self.model_format not in ("auto", "llama2c", "hf"):
            raise _invalid("model_format", "must be auto, llama2c or hf", repr(self.model_format))
        self._check_ports()
        self._check_hardening()

    def _check_ports(self) -> None:
        if not 0 <= self.port < 65536:
            raise _invalid("port", "must lie in 0..65535", self.port)
        for name in ("metrics_port", "health_port"):
            if not -1 <= getattr(self, name) < 65536:
                raise _invalid(name, "must lie in 0..65535, or be -1 (none)", getattr(self, name))
        fixed = [p for p in (self.port, self.metrics_port, self.health_port) if p > 0]
        if len(set(fixed)) < len(fixed):
            raise SettingError(
                lambda n: (
                    f"{n('port')}, {n('metrics_port')} and {n('health_port')} must differ, "
                    f"got {self.port}, {self.metrics_port} and {self.health_port}"
                )
            )

    def _check_hardening(self) -> None:
        """The limits and security settings of SECURITY.md."""
        for name in ("max_frames", "max_frame_bytes"):
            _at_least(self, name, 1)
        _at_least(self, "max_message_bytes", 1024)
        if self.max_frame_bytes >= self.max_message_bytes:
            raise SettingError(
                lambda n: (
                    f"{n('max_frame_bytes')} ({self.max_frame_bytes}) must be below "
                    f"{n('max_message_bytes')} ({self.max_message_bytes}): a frame travels in one message"
                )
            )
        for name in ("idle_timeout_s", "max_request_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise _invalid(name, "must be > 0 and finite", getattr(self, name))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingError(
                lambda n: f"{n('tls_cert')} and {n('tls_key')} go together: give both or neither"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SettingError(
                lambda n: (
                    f"{n('tls_client_ca')} (mutual TLS) needs {n('tls_cert')} and {n('tls_key')}"
                )
            )

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    def public_dict(self) -> dict[str, Any]:
        """For the start-up log line: secrets (auth_tokens) show only whether they are set."""
        secret = {f.name for f in fields(self) if f.metadata.get("secret")}
        return {
            k: ("<redacted>" if v is not None else None)
            if k in secret
            else (v.value if isinstance(v, Enum) else v)
            for k, v in dataclasses.asdict(self).items()
        }


def _invalid(name: str, rule: str, value: Any) -> SettingError:
    return SettingError(lambda n: f"{n(name)} {rule}, got {value}")


def _at_least(settings: Settings, name: str, minimum: int) -> None:
    if getattr(settings, name) < minimum:
        raise _invalid(name, f"must be >= {minimum}", getattr(settings, name))


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(field_type: str):
    return {
        "int": int,
        "float": float,
        "bool": _parse_bool,
        "DType": DType,
        "str | None": str,
    }.get(field_type, str)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (--max-new-tokens for max_new_tokens); defaults come later."""
    for f in fields(Settings):
        if f.metadata.get("env_only"):
            continue  # a secret: never a flag, which any user could read in `ps`
        env = "DEL_" + f.name.upper()
        described = f"{f.metadata['help']} (env {env}; default {f.default})".replace("%", "%%")
        if f.type == "bool":
            parser.add_argument(
                flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=described
            )
        else:
            choices = [d.value for d in DType] if f.type == "DType" else None
            parser.add_argument(
                flag(f.name),
                type=_converter(f.type),
                default=None,
                choices=choices,
                help=described,
            )


def environment_only_help() -> str:
    """The settings read from the environment alone, for the end of --help."""
    lines = [
        f"DEL_{f.name.upper()}: {f.metadata['help']} (environment only)"
        for f in fields(Settings)
        if f.metadata.get("env_only")
    ]
    return "\n".join(lines)


def resolve(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Flag if given, else DEL_<NAME> from the environment, else the default."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in fields(Settings):
        flag_value = getattr(args, f.name, None)
        env_value = environ.get("DEL_" + f.name.upper())
        if flag_value is not None:
            values[f.name] = flag_value
        elif env_value is not None:
            try:
                values[f.name] = _converter(f.type)(env_value)
            except ValueError as exc:
                raise _unparsable(f.name, env_value, exc) from exc
    return Settings(**values)


def check_ports(settings: Settings) -> None:
    """A port another process listens on fails now, not after the model loaded."""
    for name in PORTS:
        port = getattr(settings, name)
        if port > 0 and _in_use(settings.host, port):
            raise _port_in_use(name, settings.host, port)


def _port_in_use(name: str, host: str, port: int) -> SettingError:
    return SettingError(
        lambda n: (
            f"{n(name)} {port} is already in use on {host}: stop the process that "
            "listens there, or choose a free one"
        )
    )


def check_files(settings: Settings) -> None:
    """The model, adapter, certificates and token file named exist: found before any loads."""
    if settings.model == DEFAULT_MODEL and not Path(DEFAULT_MODEL).exists():
        raise SettingError(
            lambda n: (
                f"{n('model')} is not set and its default, {DEFAULT_MODEL} (shared/ "
                "beside the repository), does not exist: give a model directory or a hub id"
            )
        )
    for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_tokens_file"):
        path = getattr(settings, name)
        if path is not None and not Path(path).is_file():
            raise _missing(name, path)
    adapter = settings.adapter
    if adapter is not None and not (Path(adapter) / "adapter.json").is_file():
        raise SettingError(
            lambda n: (
                f"{n('adapter')} {Path(adapter).absolute()} holds no adapter.json: give "
                f"a directory that `del-server train` wrote, or no {n('adapter')} for the "
                "training-free PCA projection"
            )
        )


def _unparsable(name: str, text: str, error: ValueError) -> SettingError:
    return SettingError(lambda n: f"DEL_{name.upper()}={text!r}: {error}")


def _missing(name: str, path: str) -> SettingError:
    return SettingError(lambda n: f"{n(name)} {Path(path).absolute()}: no such file")


def _in_use(host: str, port: int) -> bool:
    """Whether another socket listens on host:port (a bind like gRPC's own fails)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror:
        return False  # the bind itself reports an unknown host
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
