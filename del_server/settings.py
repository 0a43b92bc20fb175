"""Every server setting in one frozen object: flag > DEL_* environment variable > default.

Resolved once at start-up, validated in __post_init__, logged once with secrets redacted, and
passed explicitly to whatever needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, fields
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
    # Limits.
    max_prompt_tokens: int = 512
    max_new_tokens: int = 256  # the most a request may ask for
    default_new_tokens: int = 64  # when a request asks for 0
    max_running: int = 16  # sequences advanced together by the engine
    max_waiting: int = 64  # queued beyond that; more gets RESOURCE_EXHAUSTED
    max_message_bytes: int = 4 * 1024 * 1024  # gRPC receive limit per message
    # Behaviour.
    enable_raw: bool = False  # offer the unprotected float32 baseline (labelled everywhere)
    report_delta: float = 1e-5  # δ at which the ε-per-prompt metric is computed
    grace_s: float = 10.0  # drain time for in-flight streams on SIGTERM
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        positive = ["max_prompt_tokens", "max_new_tokens", "default_new_tokens", "max_running"]
        positive += ["max_waiting", "max_message_bytes", "projection_dim"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.default_new_tokens > self.max_new_tokens:
            raise ValueError("default_new_tokens must not exceed max_new_tokens")
        if not 0 < self.report_delta < 1:
            raise ValueError(f"report_delta must lie in (0, 1), got {self.report_delta}")
        if self.model_format not in ("auto", "llama2c", "hf"):
            raise ValueError(f"model_format must be auto, llama2c or hf, got {self.model_format!r}")
        if not 0 <= self.port < 65536 or not -1 <= self.metrics_port < 65536:
            raise ValueError("ports must lie in 0..65535 (metrics: -1 disables)")

    def public_dict(self) -> dict[str, Any]:
        """For the start-up log line (no secrets exist yet; redact here when they do)."""
        return {
            k: (v.value if isinstance(v, Enum) else v) for k, v in dataclasses.asdict(self).items()
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
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(env {env}, default {f.default})")  # fmt: skip
        else:
            choices = [d.value for d in DType] if f.type == "DType" else None
            parser.add_argument(flag, type=_converter(f.type), default=None, choices=choices,
                                help=f"(env {env}, default {f.default})")  # fmt: skip


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
