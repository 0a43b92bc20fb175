"""The listening port: plaintext, TLS, or mutual TLS, with certificates reloaded on change.

With `tls_cert` and `tls_key` the port speaks TLS; with `tls_client_ca` as well, every client
must present a certificate signed by that CA (mutual TLS), or the handshake fails before any
RPC exists. gRPC asks `fetch` for a configuration at each new TLS handshake; it answers None
(keep the current one) unless a file's modification time changed, so a renewed certificate
(e.g. cert-manager rewriting a mounted Secret) serves every new connection without a
restart, while open connections keep what they negotiated. A changed set of files that does
not load (a key that does not match its certificate, a half-written file) keeps the old
configuration, logs a warning, and is tried again at the next handshake.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import grpc

from .settings import Settings

log = logging.getLogger(__name__)


class CertificateFiles:
    """The server's PEM files, read as one consistent set."""

    def __init__(self, cert: str, key: str, client_ca: str | None) -> None:
        self._paths = [Path(cert), Path(key)] + ([Path(client_ca)] if client_ca else [])
        self._loaded_mtimes: list[int] | None = None
        self.require_client_auth = client_ca is not None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """Read and check the files; ValueError says which one is wrong."""
        mtimes = [p.stat().st_mtime_ns for p in self._paths]
        cert, key, *ca = self._paths
        try:
            # The standard library checks that the key belongs to the certificate, which gRPC
            # would otherwise discover only when a handshake fails.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            if ca:
                ssl.create_default_context(cafile=ca[0])
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"TLS files {[str(p) for p in self._paths]}: {exc}") from exc
        configuration = grpc.ssl_server_certificate_configuration(
            [(key.read_bytes(), cert.read_bytes())],
            root_certificates=ca[0].read_bytes() if ca else None,
        )
        self._loaded_mtimes = mtimes
        return configuration

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's per-handshake callback: a new configuration if the files changed, else None."""
        try:
            if [p.stat().st_mtime_ns for p in self._paths] == self._loaded_mtimes:
                return None
            configuration = self.configuration()
        except (OSError, ValueError) as exc:  # raising here would fail the handshake
            log.warning("TLS files not reloaded, keeping the previous ones: %s", exc)
            return None
        log.info("TLS certificates reloaded", extra={"cert": str(self._paths[0])})
        return configuration


def bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Open the gRPC port as the settings ask; returns the bound port (useful with port 0)."""
    address = f"{settings.host}:{settings.port}"
    if not settings.tls_enabled:
        return server.add_insecure_port(address)
    files = CertificateFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    credentials = grpc.dynamic_ssl_server_credentials(
        files.configuration(),
        files.fetch,
        require_client_authentication=files.require_client_auth,
    )
    log.info(
        "TLS on", extra={"mutual": files.require_client_auth, "cert": os.fspath(settings.tls_cert)}
    )
    return server.add_secure_port(address, credentials)
