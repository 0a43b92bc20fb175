"""A session's privacy budget, enforced before anything is sent.

Composition is exact: prompts at the same q = 1/2 + c/(2A) together form one binomial pair
with the summed number of draws (accountant module docstring). Prompts at different q are
charged at the largest q seen: each draw at q' <= q is a post-processing of a draw at q
(flip it with a fixed probability), so the pair at the largest q dominates them all. That
bound is sound, and exact in the usual case of one privacy setting per session.

So (total draws, largest q) is all a budget needs to remember: `compose` and `epsilon_spent`
are the pure functions on it, shared by the in-memory PrivacyBudget below and the persistent
ledger (ledger.py). Anything with Budget's `charge` can guard a request.
"""

from __future__ import annotations

import threading
from typing import Protocol

from . import accountant
from .errors import BudgetExceededError, PrivacyParameterError
from .mechanism import PrivacySpec
from .parameters import check_delta, check_positive_finite


class Budget(Protocol):
    def charge(self, spec: PrivacySpec, *, tokens: int) -> float:
        """Record a prompt and return the total ε; BudgetExceededError (charging nothing) if over."""
        ...


def compose(draws: int, q: float, spec: PrivacySpec, tokens: int) -> tuple[int, float]:
    """(draws, q) after adding a `tokens`-token prompt under `spec` (module docstring)."""
    if tokens < 1:
        raise PrivacyParameterError(f"tokens must be >= 1, got {tokens}")
    return draws + tokens * spec.draws_per_token, max(q, spec.q)


def epsilon_spent(draws: int, q: float, delta: float) -> float:
    """Exact ε at `delta` of `draws` binomial draws at `q` (0 before any draw)."""
    return 0.0 if draws == 0 else accountant.epsilon_for_delta(delta, n=draws, q=q)


def refusal(tokens: int, total: float, delta: float, limit: float, spent: float) -> str:
    return (
        f"this {tokens}-token prompt would bring ε to {total:.4g} at δ={delta:g}, over the "
        f"budget of {limit:g} (spent {spent:.4g}); nothing was sent"
    )


class PrivacyBudget:
    """Total (ε, δ) that all prompts charged here may spend together.

    budget = PrivacyBudget(epsilon=50.0, delta=1e-5)
    budget.charge(spec, tokens=32)   # raises BudgetExceededError, charging nothing, if over
    """

    def __init__(self, *, epsilon: float, delta: float) -> None:
        self.epsilon = check_positive_finite("budget epsilon", epsilon)
        self.delta = check_delta(delta, name="budget delta")
        self._draws = 0
        self._q = 0.5
        self._lock = threading.Lock()

    def _epsilon_with(self, draws: int, q: float) -> float:
        return epsilon_spent(draws, q, self.delta)

    @property
    def spent(self) -> float:
        """ε spent so far, at this budget's δ."""
        with self._lock:
            return self._epsilon_with(self._draws, self._q)

    def cost_after(self, spec: PrivacySpec, *, tokens: int) -> float:
        """Total ε if a `tokens`-token prompt under `spec` were charged now."""
        with self._lock:
            return self._epsilon_with(*compose(self._draws, self._q, spec, tokens))

    def charge(self, spec: PrivacySpec, *, tokens: int) -> float:
        """Record a prompt and return the new total ε; refuse (charging nothing) if over budget."""
        with self._lock:
            draws, q = compose(self._draws, self._q, spec, tokens)
            total = self._epsilon_with(draws, q)
            if total > self.epsilon:
                spent = self._epsilon_with(self._draws, self._q)
                raise BudgetExceededError(refusal(tokens, total, self.delta, self.epsilon, spent))
            self._draws, self._q = draws, q
            return total
