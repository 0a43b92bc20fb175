"""Bearer tokens: where they come from, and the one comparison that checks them.

Tokens come from DEL_AUTH_TOKENS (comma-separated) and from `auth_tokens_file` (one a line;
blank lines and `#` comments ignored). The file is re-read when its modification time
changes, looked at no more than once per `recheck_s`, so tokens rotate without a restart:
add the new token, move the clients over, remove the old one. A file that cannot be read
during a reload keeps the tokens already loaded (and logs why), so a half-finished rotation
does not lock everyone out; at start-up it is an error.

A presented token is hashed with SHA-256 and compared with the hash of every configured token
by hmac.compare_digest, without stopping at a match: equal-length digests and a fixed number
of comparisons make the time taken independent of the token's length, of how many leading
bytes matched, and of which token matched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from .settings import Settings

log = logging.getLogger(__name__)

# Shorter tokens can be guessed by brute force over the network; refuse them at start-up.
MIN_TOKEN_CHARS = 16


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


def parse_tokens(text: str, *, separator: str | None = None) -> list[str]:
    """Tokens in `text`: one a line (or split on `separator`), blanks and # comments dropped."""
    parts = text.split(separator) if separator else text.splitlines()
    tokens = [p.strip() for p in parts]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    for token in tokens:
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
            raise ValueError(
                f"every auth token needs at least {MIN_TOKEN_CHARS} characters and no spaces "
                f"(one is {len(token)} characters long)"
            )
    return tokens


class TokenStore:
    """The accepted tokens (as SHA-256 digests), reloaded from their file when it changes."""

    def __init__(
        self,
        *,
        env_tokens: str | None = None,
        path: str | os.PathLike | None = None,
        recheck_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fixed = [_digest(t) for t in parse_tokens(env_tokens or "", separator=",")]
        self._path = Path(path) if path is not None else None
        self._recheck_s = recheck_s
        self._clock = clock
        self._checked_at = -float("inf")
        self._mtime_ns: int | None = None
        self._from_file: list[bytes] = []
        if self._path is not None:
            self._reload(strict=True)
        if not self._fixed and not self._from_file:
            log.warning("token authentication is on but no token is configured: all calls fail")

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenStore | None:
        """The store for these settings, or None when token authentication is off."""
        if settings.auth_tokens is None and settings.auth_tokens_file is None:
            return None
        return cls(env_tokens=settings.auth_tokens, path=settings.auth_tokens_file)

    def accepts(self, authorization: str | None) -> bool:
        """True if `authorization` is "Bearer <token>" for a configured token."""
        scheme, _, credential = (authorization or "").partition(" ")
        presented = _digest(credential.strip())
        matched = False
        for known in self._digests():
            matched |= hmac.compare_digest(known, presented)  # no early exit, on purpose
        return matched and scheme.lower() == "bearer"

    def _digests(self) -> list[bytes]:
        if self._path is not None and self._clock() - self._checked_at >= self._recheck_s:
            self._reload(strict=False)
        return self._fixed + self._from_file

    def _reload(self, *, strict: bool) -> None:
        self._checked_at = self._clock()
        try:
            mtime_ns = self._path.stat().st_mtime_ns
            if mtime_ns == self._mtime_ns:
                return
            tokens = parse_tokens(self._path.read_text())
        except (OSError, ValueError) as exc:
            if strict:
                raise ValueError(f"auth_tokens_file {self._path}: {exc}") from exc
            log.warning("auth tokens not reloaded, keeping the previous ones: %s", exc)
            return
        self._from_file = [_digest(t) for t in tokens]
        self._mtime_ns = mtime_ns
        log.info("auth tokens loaded", extra={"tokens": len(tokens), "path": str(self._path)})
