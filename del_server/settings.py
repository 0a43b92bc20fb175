"""Every server setting in one frozen object: flag > DEL_* environment variable > default.

Resolved once at start-up, validated in __post_init__, logged once with secrets redacted, and
passed explicitly to whatever needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any


class DType(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass(frozen=True)
class Settings:
    # What to serve.
    model: str = "../shared/models/stories260K"  # llama2.c dir/file, HF directory or hub id
    model_format: str = "auto"  # auto | llama2c | hf
    adapter: str | None = None  # adapter directory; None = training-free PCA default
    projection_dim: int = 16  # k of the PCA default (ignored with --adapter)
    dtype: DType = DType.float32
    # Where.
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port (tests)
    metrics_port: int = 9400  # 0 picks a free port; -1 disables the metrics endpoint
    # Plaintext grpc.health.v1 and nothing else, for probes that cannot speak TLS (the
    # kubelet's); 0 picks a free port; -1: health is only on the main port.
    health_port: int = -1
    # Limits.
    max_prompt_tokens: int = 512
    max_new_tokens: int = 256  # the most a request may ask for
    default_new_tokens: int = 64  # when a request asks for 0
    max_running: int = 16  # sequences advanced together by the engine
    max_waiting: int = 64  # queued beyond that; more gets RESOURCE_EXHAUSTED
    max_message_bytes: int = 4 * 1024 * 1024  # gRPC receive limit per message
    max_frames: int = 512  # frames in one Generate stream
    max_frame_bytes: int = 64 * 1024  # payload bytes in one frame (the client's default size)
    idle_timeout_s: float = 30.0  # longest wait for the client's next message before its End
    max_request_s: float = 300.0  # a Generate stream's whole life, whatever deadline the client set
    # Security (SECURITY.md). TLS when tls_cert and tls_key are set, mutual TLS when
    # tls_client_ca is set too; the files are re-read when they change (rotation, no restart).
    tls_cert: str | None = None  # PEM certificate chain of the server
    tls_key: str | None = None  # PEM private key of that certificate
    tls_client_ca: str | None = None  # PEM CA bundle: require client certificates signed by it
    auth_tokens_file: str | None = None  # bearer tokens, one a line; re-read when it changes
    # Bearer tokens, comma-separated: DEL_AUTH_TOKENS only (a flag would show in `ps`).
    auth_tokens: str | None = field(default=None, repr=False, metadata={"secret": True, "env_only": True})  # fmt: skip
    # Behaviour.
    enable_raw: bool = False  # offer the unprotected float32 baseline (labelled everywhere)
    report_delta: float = 1e-5  # δ at which the ε-per-prompt metric is computed
    grace_s: float = 10.0  # drain time for in-flight streams on SIGTERM
    # Connections. A client keeps one HTTP/2 connection and sends every stream over it, so a
    # replica added by a scale-out gets no traffic until clients reconnect: a finite
    # max_connection_age makes them reconnect and re-resolve (deploy/README.md).
    keepalive_time_s: float = 60.0  # ping an idle connection this often to find dead peers
    keepalive_timeout_s: float = 20.0  # close a connection whose ping goes unanswered this long
    max_connection_age_s: float = 0.0  # GOAWAY to a connection this old (±10 % jitter); 0 = never
    max_connection_age_grace_s: float = 60.0  # streams still open at GOAWAY may finish this long
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        positive = ["max_prompt_tokens", "max_new_tokens", "default_new_tokens", "max_running"]
        positive += ["max_waiting", "max_message_bytes", "projection_dim"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.default_new_tokens > self.max_new_tokens:
            raise ValueError("default_new_tokens must not exceed max_new_tokens")
        for name in ("keepalive_time_s", "keepalive_timeout_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)}")
        for name in ("grace_s", "max_connection_age_s", "max_connection_age_grace_s"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be >= 0 and finite, got {getattr(self, name)}")
        if not 0 < self.report_delta < 1:
            raise ValueError(f"report_delta must lie in (0, 1), got {self.report_delta}")
        if self.model_format not in ("auto", "llama2c", "hf"):
            raise ValueError(f"model_format must be auto, llama2c or hf, got {self.model_format!r}")
        if not 0 <= self.port < 65536 or not all(
            -1 <= p < 65536 for p in (self.metrics_port, self.health_port)
        ):
            raise ValueError("ports must lie in 0..65535 (metrics and health: -1 disables)")
        fixed = [p for p in (self.port, self.metrics_port, self.health_port) if p > 0]
        if len(set(fixed)) < len(fixed):
            raise ValueError(
                f"port, metrics_port and health_port must differ, got {self.port}, "
                f"{self.metrics_port} and {self.health_port}"
            )
        self._check_hardening()

    def _check_hardening(self) -> None:
        """The limits and security settings of SECURITY.md."""
        for name in ("max_frames", "max_frame_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.max_frame_bytes >= self.max_message_bytes:
            raise ValueError(
                f"max_frame_bytes ({self.max_frame_bytes}) must be below max_message_bytes "
                f"({self.max_message_bytes}): a frame travels in one message"
            )
        for name in ("idle_timeout_s", "max_request_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")

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
        flag = "--" + f.name.replace("_", "-")
        env = "DEL_" + f.name.upper()
        if f.metadata.get("env_only"):
            continue  # a secret: never a flag, which any user could read in `ps`
        if f.type == "bool":
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"(env {env}, default {f.default})",
            )
        else:
            choices = [d.value for d in DType] if f.type == "DType" else None
            parser.add_argument(
                flag,
                type=_converter(f.type),
                default=None,
                choices=choices,
                help=f"(env {env}, default {f.default})",
            )


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
                raise ValueError(f"DEL_{f.name.upper()}={env_value!r}: {exc}") from exc
    return Settings(**values)
