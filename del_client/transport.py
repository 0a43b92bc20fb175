"""How both clients reach the server: one channel recipe and one set of call metadata.

Client and AsyncClient open their channel here (passing the `grpc` or the `grpc.aio`
module, whose channel functions share their signatures), so TLS, mutual TLS and the token
behave identically in both.
"""

from __future__ import annotations

from types import ModuleType

import grpc

from .config import ClientConfig


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials for the channel, or None for plaintext."""
    if not config.uses_tls:
        return None
    read = lambda path: path.read_bytes() if path is not None else None  # noqa: E731
    return grpc.ssl_channel_credentials(
        root_certificates=read(config.root_certificates),
        private_key=read(config.client_key),
        certificate_chain=read(config.client_certificate),
    )


def channel_options(config: ClientConfig) -> list[tuple[str, str]]:
    options = [("grpc.lb_policy_name", config.load_balancing)]
    if config.server_name is not None:
        # Verify the certificate against this name instead of the target's host (e.g. an IP).
        options.append(("grpc.ssl_target_name_override", config.server_name))
    return options


def open_channel(config: ClientConfig, grpc_module: ModuleType = grpc):
    """A channel to config.target: `grpc_module` is `grpc` (blocking) or `grpc.aio`."""
    credentials = channel_credentials(config)
    options = channel_options(config)
    if credentials is None:
        return grpc_module.insecure_channel(config.target, options=options)
    return grpc_module.secure_channel(config.target, credentials, options=options)


def call_metadata(config: ClientConfig) -> tuple[tuple[str, str], ...]:
    """What every call carries: the bearer token, when there is one."""
    return () if config.token is None else (("authorization", f"Bearer {config.token}"),)
