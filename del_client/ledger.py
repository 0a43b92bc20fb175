"""A privacy budget that outlives the process: per identity, on disk, shared between processes.

    ledger = PrivacyLedger()                                   # $DEL_LEDGER or ~/.local/state/del
    budget = LedgerBudget(ledger, identity="alice", epsilon=500, delta=1e-5)
    client.generate("Once upon a time", mu=10, budget=budget)  # charged on disk before sending

What one identity has spent is exactly what budget.py composes: the total number of binomial
draws and the largest q among them (exact when every request used the same q, a sound upper
bound otherwise). The file stores that state, never ε, so ε can be stated at any δ later:

    {"version": 1, "identities": {"alice": {"draws": 960, "q": 0.5125, "requests": 4,
     "epsilon_limit": 500.0, "delta": 1e-05, "updated": "2025-01-01T12:00:00+00:00"}}}

A charge locks the ledger (flock on `<file>.lock`, so concurrent processes and threads queue),
reads it, refuses with BudgetExceededError if the new total ε would exceed the limit, and only
then writes: to a temporary file in the same directory, fsync, rename over the old file, fsync
the directory. A crash leaves the old ledger or the new one, never a torn one. A missing file
is an empty ledger; an unreadable or malformed one raises LedgerError, because starting again
from zero would silently hand out the budget a second time.

The charge is made before the request is sent and kept even if sending fails afterwards: the
server may have received the frames before the failure. Retries resend those same frames and
are not charged again (retry.py). POSIX only (fcntl).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from .budget import compose, epsilon_spent, refusal
from .errors import BudgetExceededError, LedgerError, PrivacyParameterError
from .mechanism import PrivacySpec
from .parameters import check_delta, check_positive_finite, is_delta

FORMAT_VERSION = 1
DEFAULT_IDENTITY = "default"
LOCK_TIMEOUT_S = 10.0


def default_ledger_path() -> Path:
    """$DEL_LEDGER, else $XDG_STATE_HOME/del/privacy_ledger.json (~/.local/state by default)."""
    if configured := os.environ.get("DEL_LEDGER"):
        return Path(configured).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "del" / "privacy_ledger.json"


@dataclass(frozen=True)
class LedgerEntry:
    """One identity's spending: the composition state, and the budget last configured for it."""

    draws: int
    q: float
    requests: int
    epsilon_limit: float
    delta: float
    updated: str

    def spent(self, delta: float | None = None) -> float:
        """Exact ε spent so far, at `delta` (default: the configured δ)."""
        return epsilon_spent(self.draws, self.q, self.delta if delta is None else delta)

    @classmethod
    def from_json(cls, identity: str, raw: object) -> LedgerEntry:
        """Validate before trusting: a wrong type or range is a LedgerError naming it."""
        if not isinstance(raw, dict) or set(raw) != {f for f in cls.__dataclass_fields__}:
            raise LedgerError(f"ledger entry {identity!r} has the wrong fields: {raw!r}")
        draws, q, requests = raw["draws"], raw["q"], raw["requests"]
        limit, delta = raw["epsilon_limit"], raw["delta"]
        checks = [
            (isinstance(draws, int) and not isinstance(draws, bool) and draws >= 0, "draws"),
            (isinstance(q, float | int) and 0.5 <= q <= 1, "q"),
            (
                isinstance(requests, int) and not isinstance(requests, bool) and requests >= 0,
                "requests",
            ),
            (
                isinstance(limit, float | int) and math.isfinite(limit) and limit > 0,
                "epsilon_limit",
            ),
            (is_delta(delta), "delta"),
            (isinstance(raw["updated"], str), "updated"),
        ]
        for ok, name in checks:
            if not ok:
                raise LedgerError(f"ledger entry {identity!r}: invalid {name} {raw[name]!r}")
        return cls(draws, float(q), requests, float(limit), float(delta), raw["updated"])


def _check_identity(identity: str) -> str:
    if not isinstance(identity, str) or not identity or len(identity) > 200:
        raise PrivacyParameterError(f"identity must be a non-empty string, got {identity!r}")
    if not identity.isprintable():
        raise PrivacyParameterError(f"identity must be printable, got {identity!r}")
    return identity


class PrivacyLedger:
    """The JSON file of every identity's spending, read and written under a file lock."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_ledger_path()
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def entries(self) -> dict[str, LedgerEntry]:
        """Every identity's entry (a consistent snapshot)."""
        with self._locked():
            return self._read()

    def entry(self, identity: str) -> LedgerEntry | None:
        return self.entries().get(_check_identity(identity))

    def charge(
        self, identity: str, spec: PrivacySpec, *, tokens: int, epsilon: float, delta: float
    ) -> float:
        """Record a prompt for `identity` and return its total ε at `delta`.

        Refuses (BudgetExceededError, nothing written) when the total would exceed `epsilon`.
        """
        _check_identity(identity)
        with self._locked():
            entries = self._read()
            old = entries.get(identity)
            draws, q = (old.draws, old.q) if old else (0, 0.5)
            new_draws, new_q = compose(draws, q, spec, tokens)
            total = epsilon_spent(new_draws, new_q, delta)
            if total > epsilon:
                raise BudgetExceededError(
                    f"identity {identity!r}: "
                    + refusal(tokens, total, delta, epsilon, epsilon_spent(draws, q, delta))
                )
            entries[identity] = LedgerEntry(
                draws=new_draws,
                q=new_q,
                requests=(old.requests if old else 0) + 1,
                epsilon_limit=float(epsilon),
                delta=float(delta),
                updated=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            self._write(entries)
            return total

    def reset(self, identity: str) -> bool:
        """Forget what `identity` spent; True if there was an entry."""
        _check_identity(identity)
        with self._locked():
            entries = self._read()
            if entries.pop(identity, None) is None:
                return False
            self._write(entries)
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock on the sidecar lock file, waited for at most LOCK_TIMEOUT_S."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerError(f"cannot open the ledger lock {self._lock_path}: {exc}") from exc
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LedgerError(
                            f"the ledger {self.path} stayed locked for {LOCK_TIMEOUT_S:g} s"
                        ) from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _read(self) -> dict[str, LedgerEntry]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise LedgerError(f"cannot read the ledger {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LedgerError(f"the ledger {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise LedgerError(f"the ledger {self.path} is not a version {FORMAT_VERSION} ledger")
        identities = data.get("identities")
        if not isinstance(identities, dict):
            raise LedgerError(f"the ledger {self.path} has no 'identities' object")
        return {name: LedgerEntry.from_json(name, raw) for name, raw in identities.items()}

    def _write(self, entries: dict[str, LedgerEntry]) -> None:
        data = {
            "version": FORMAT_VERSION,
            "identities": {name: asdict(entry) for name, entry in sorted(entries.items())},
        }
        directory = self.path.parent
        try:
            fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(data, out, indent=1)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.path)  # mkstemp made it 0600
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
            directory_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(directory_fd)  # the rename itself survives a crash
            finally:
                os.close(directory_fd)
        except OSError as exc:
            raise LedgerError(f"cannot write the ledger {self.path}: {exc}") from exc


class LedgerBudget:
    """A Budget (as PrivacyBudget) kept in a PrivacyLedger under one identity.

    budget = LedgerBudget(PrivacyLedger(), identity="alice", epsilon=500, delta=1e-5)
    client.generate(prompt, mu=10, budget=budget)   # BudgetExceededError before sending
    """

    def __init__(
        self,
        ledger: PrivacyLedger,
        *,
        identity: str = DEFAULT_IDENTITY,
        epsilon: float,
        delta: float,
    ) -> None:
        self.epsilon = check_positive_finite("budget epsilon", epsilon)
        self.delta = check_delta(delta, name="budget delta")
        self.ledger = ledger
        self.identity = _check_identity(identity)

    @property
    def spent(self) -> float:
        """ε this identity has spent, at this budget's δ."""
        entry = self.ledger.entry(self.identity)
        return 0.0 if entry is None else entry.spent(self.delta)

    def charge(self, spec: PrivacySpec, *, tokens: int) -> float:
        return self.ledger.charge(
            self.identity, spec, tokens=tokens, epsilon=self.epsilon, delta=self.delta
        )
