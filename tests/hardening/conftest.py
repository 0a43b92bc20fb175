"""Fixtures of the hardening tests: the throwaway PKI and server settings."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hardening_kit import PKI, Authority


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority.create("ca", directory)
    rogue = Authority.create("rogue-ca", directory)
    return PKI(
        ca,
        rogue,
        *ca.issue("server", server=True),
        *ca.issue("client", server=False),
        *rogue.issue("rogue-client", server=False),
    )


@pytest.fixture(scope="session")
def settings_for(stories260k) -> Callable:
    """`settings_for(max_frames=2, ...)`: loopback Settings for stories260K, port chosen by the OS."""
    from del_server.settings import Settings

    def build(**overrides):
        base = {"model": str(stories260k), "port": 0, "metrics_port": -1, "grace_s": 1.0}
        return Settings(**{**base, **overrides})

    return build
