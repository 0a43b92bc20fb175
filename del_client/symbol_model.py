"""The public symbol model that entropy-coded payloads are coded with (docs/PROTOCOL.md §3.11).

For coordinate i it is the law of the symbol N when the token is drawn uniformly from the
vocabulary and then privatized, a mixture of binomials over the table's rows:

    P_i(n) ∝ Σ_v Binomial(n; K, 1/2 + clip(Z[v, i])/(2A))

quantized to integer frequencies f_i(n) >= 1 that sum to 2^24 (PRECISION). Both sides
compute it from the client bundle and the header's (b, c, A) alone: it is public, so coding
with it reveals nothing the symbols did not, and it needs no bytes on the wire. Under the
mechanism's noise the symbols are nearly binomial whatever the prompt, so this prior, which
knows nothing of which tokens are frequent, is already within a few tenths of a percent of
the symbols' entropy.

Both sides must get every frequency exactly, or a frame does not decode. So every float step
is one IEEE-754 double operation (+, −, ×, ÷; no fused multiply-add, no library function) in
a fixed order, the sum over rows runs in row order, and the quantization is a floor: an
implementation in any language that follows PROTOCOL.md gets the same integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .mechanism import PrivacySpec, compiled

if TYPE_CHECKING:
    from .bundle import ClientBundle

PRECISION = 24  # frequencies sum to 2^24: constriction's categorical models' precision
TOTAL = 1 << PRECISION


@compiled
def _mixture(table, clip, scale, bits, out):  # pragma: no cover - compiled
    """out[n, i] = Σ_v pmf_v,i(n), rows v in order, with the float steps PROTOCOL.md §3.11 fixes
    (the sampler's own recurrence); each step runs over a row's k coordinates at once."""
    K = (1 << bits) - 1
    dim = table.shape[1]
    pmf = np.empty((K + 1, dim))
    ratio = np.empty(dim)
    upper = np.empty(dim, np.bool_)
    for v in range(table.shape[0]):
        for i in range(dim):
            x = min(max(np.float64(table[v, i]), -clip), clip)
            p = 0.5 + x / (2.0 * scale)
            low = min(p, 1.0 - p)  # the lighter side, as the sampler: high^K cannot underflow
            high = 1.0 - low
            ratio[i] = low / high
            power = high
            for _ in range(bits):
                power = power * power
            pmf[0, i] = power / high  # high^(2^b − 1) = high^K
            upper[i] = p > 0.5
        for j in range(K):
            step = (K - j) / (j + 1.0)
            for i in range(dim):
                pmf[j + 1, i] = pmf[j, i] * (ratio[i] * step)
        for n in range(K + 1):
            for i in range(dim):
                out[n, i] += pmf[K - n, i] if upper[i] else pmf[n, i]


def mixture(table: np.ndarray, spec: PrivacySpec) -> np.ndarray:
    """(k, K + 1) float64: Σ_v Binomial(n; K, p_v,i) over the rows of `table` (V, k)."""
    table = np.ascontiguousarray(table, dtype=np.float32)
    if table.ndim != 2 or table.shape[1] != spec.dim:
        raise ValueError(f"table must have shape (V, {spec.dim}), got {table.shape}")
    out = np.zeros((spec.levels + 1, spec.dim))
    _mixture(table, spec.clip, spec.scale, spec.bits, out)
    return np.ascontiguousarray(out.T)


def quantize(weights: np.ndarray) -> np.ndarray:
    """(k, K + 1) non-negative weights -> uint32 frequencies, each >= 1, rows summing to 2^24.

    Cumulative C(0) = 0, C(n) = n + ⌊S(n)·w⌋ with S(n) the weights of symbols below n summed
    in order and w = (2^24 − (K + 1)) / S(K + 1), and C(K + 1) = 2^24; f(n) = C(n + 1) − C(n).
    """
    symbols = weights.shape[1]
    below = np.cumsum(weights, axis=1)  # a running sum, in symbol order
    factor = (TOTAL - symbols) / below[:, -1:]
    cumulative = np.empty((weights.shape[0], symbols + 1), dtype=np.int64)
    cumulative[:, 0] = 0
    cumulative[:, 1:-1] = np.floor(below[:, :-1] * factor) + np.arange(1, symbols)
    cumulative[:, -1] = TOTAL
    return np.diff(cumulative, axis=1).astype(np.uint32)


@dataclass(frozen=True, eq=False)
class SymbolModel:
    """Integer frequencies f_i(n) per coordinate i and symbol n: (k, K + 1) uint32."""

    frequencies: np.ndarray

    @classmethod
    def from_table(cls, table: np.ndarray, spec: PrivacySpec) -> SymbolModel:
        """The model of `spec`'s symbols for tokens drawn uniformly from `table` (V, k)."""
        return cls(quantize(mixture(table, spec)))

    @property
    def dim(self) -> int:
        return self.frequencies.shape[0]

    def cross_entropy_bits(self, symbols: np.ndarray) -> float:
        """−Σ log2 f_i(N)/2^24 over (T, k) symbols: the size an ideal coder reaches."""
        chosen = self.frequencies[np.arange(self.dim), symbols.astype(np.intp)]
        return float(PRECISION * symbols.size - np.log2(chosen).sum())


_MODELS_KEPT = 16
_models: dict[tuple[str, PrivacySpec], SymbolModel] = {}


def model_for(bundle: ClientBundle, spec: PrivacySpec) -> SymbolModel:
    """The model of `bundle` at `spec`, computed once per (digest, spec) and kept (a few, then
    all forgotten at once); the bundle itself is not kept, whose table may be large."""
    key = (bundle.digest, spec)
    if (model := _models.get(key)) is None:
        if len(_models) >= _MODELS_KEPT:
            _models.clear()
        model = _models[key] = SymbolModel.from_table(bundle.table, spec)
    return model
