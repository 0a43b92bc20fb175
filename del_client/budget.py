"""A session's privacy budget, enforced before anything is sent.

Composition is exact: prompts at the same q = 1/2 + c/(2A) together form one binomial pair
with the summed number of draws (accountant module docstring). Prompts at different q are
charged at the largest q seen: each draw at q' <= q is a post-processing of a draw at q
(flip it with a fixed probability), so the pair at the largest q dominates them all. That
bound is sound, and exact in the usual case of one privacy setting per session.
"""

from __future__ import annotations

import threading

from . import accountant
from .errors import BudgetExceededError, PrivacyParameterError
from .mechanism import PrivacySpec


class PrivacyBudget:
    """Total (ε, δ) that all prompts charged here may spend together.

    budget = PrivacyBudget(epsilon=50.0, delta=1e-5)
    budget.charge(spec, tokens=32)   # raises BudgetExceededError, charging nothing, if over
    """

    def __init__(self, *, epsilon: float, delta: float) -> None:
        if not (epsilon > 0 and epsilon != float("inf")):
            raise PrivacyParameterError(f"budget epsilon must be finite and > 0, got {epsilon!r}")
        if not 0 < delta < 1:
            raise PrivacyParameterError(f"budget delta must lie in (0, 1), got {delta!r}")
        self.epsilon = float(epsilon)
        self.delta = float(delta)
        self._draws = 0
        self._q = 0.5
        self._lock = threading.Lock()

    def _epsilon_with(self, draws: int, q: float) -> float:
        return 0.0 if draws == 0 else accountant.epsilon_for_delta(self.delta, n=draws, q=q)

    @property
    def spent(self) -> float:
        """ε spent so far, at this budget's δ."""
        with self._lock:
            return self._epsilon_with(self._draws, self._q)

    def cost_after(self, spec: PrivacySpec, *, tokens: int) -> float:
        """Total ε if a `tokens`-token prompt under `spec` were charged now."""
        with self._lock:
            return self._epsilon_with(
                self._draws + tokens * spec.draws_per_token, max(self._q, spec.q)
            )

    def charge(self, spec: PrivacySpec, *, tokens: int) -> float:
        """Record a prompt and return the new total ε; refuse (charging nothing) if over budget."""
        if tokens < 1:
            raise PrivacyParameterError(f"tokens must be >= 1, got {tokens}")
        with self._lock:
            draws = self._draws + tokens * spec.draws_per_token
            q = max(self._q, spec.q)
            total = self._epsilon_with(draws, q)
            if total > self.epsilon:
                raise BudgetExceededError(
                    f"this {tokens}-token prompt would bring ε to {total:.4g} at δ={self.delta:g}, "
                    f"over the budget of {self.epsilon:g} (spent {self._epsilon_with(self._draws, self._q):.4g})"
                )
            self._draws, self._q = draws, q
            return total
