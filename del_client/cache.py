"""Client bundles on disk, by digest: fetch once per bundle, verify on every read.

A file is `<dir>/<sha256>.safetensors`, written to a temporary file in the same directory and
renamed into place, so a reader never sees half a bundle. A file whose bytes no longer hash to
its name (disk error, an edit, an interrupted copy) is deleted and reported as missing, so the
client fetches it again instead of encoding with a table the server did not publish.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .bundle import ClientBundle
from .errors import BundleError, ProtocolError

_DIGEST = re.compile(r"[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    """A digest from the server names a file here: accept lowercase SHA-256 hex only."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ProtocolError(f"the server advertised a malformed bundle digest {digest!r}")
    return digest


class BundleCache:
    """Verified bundles by digest, in memory for this client and on disk for every client."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._loaded: dict[str, ClientBundle] = {}

    def path(self, digest: str) -> Path:
        return self.directory / f"{check_digest(digest)}.safetensors"

    def get(self, digest: str) -> ClientBundle | None:
        """The bundle with this digest, or None if absent or corrupt (a corrupt file is removed)."""
        if digest in self._loaded:
            return self._loaded[digest]
        path = self.path(digest)
        try:
            bundle = ClientBundle.load(path, expected_digest=digest)
        except FileNotFoundError:
            return None
        except BundleError:
            path.unlink(missing_ok=True)
            return None
        self._loaded[digest] = bundle
        return bundle

    def put(self, bundle: ClientBundle) -> ClientBundle:
        """Store a verified bundle atomically; returns it."""
        path = self.path(bundle.digest)
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(bundle.to_bytes())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._loaded[bundle.digest] = bundle
        return bundle
