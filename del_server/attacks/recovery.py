"""How much of a prompt an attack recovered, with intervals that respect that tokens of one
prompt are not independent draws (a context attack gets a whole phrase right or wrong).

95 % intervals are clustered by prompt: the rate is a ratio of sums over prompts, and its
standard error comes from the per-prompt residuals (the linearised ratio estimator), so a
prompt, not a token, is the unit of sampling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054
CONTENT_EXCLUDES = 50  # the most frequent public tokens are function words and punctuation


@dataclass(frozen=True)
class Recovery:
    rate: float  # share of prompt tokens recovered
    low: float  # 95 % interval of `rate`, clustered by prompt
    high: float
    content_rate: float  # share of content tokens recovered (outside the most frequent ones)
    half_prompts: float  # share of prompts with at least half of their tokens recovered
    exact_prompts: float  # share of prompts recovered entirely
    tokens: int
    content_tokens: int
    prompts: int

    def to_dict(self) -> dict:
        return asdict(self)


def content_mask(token_ids: np.ndarray, public_ids: np.ndarray, vocab: int) -> np.ndarray:
    """True for tokens outside the CONTENT_EXCLUDES most frequent tokens of public text."""
    frequent = np.argsort(-np.bincount(public_ids, minlength=vocab), kind="stable")
    return ~np.isin(token_ids, frequent[:CONTENT_EXCLUDES])


def clustered_interval(hits: np.ndarray, sizes: np.ndarray) -> tuple[float, float, float]:
    """(rate, low, high) of Σ hits / Σ sizes over clusters (one entry per prompt)."""
    total = sizes.sum()
    if total == 0:
        return math.nan, math.nan, math.nan
    rate = hits.sum() / total
    clusters = len(hits)
    if clusters < 2:
        return float(rate), 0.0, 1.0
    residuals = hits - rate * sizes
    se = math.sqrt(clusters / (clusters - 1) * float((residuals**2).sum())) / total
    return float(rate), max(0.0, rate - Z95 * se), min(1.0, rate + Z95 * se)


def recovery(guesses: np.ndarray, truth: np.ndarray, content: np.ndarray) -> Recovery:
    """(P, T) guessed ids against the true ones; `content` marks the content tokens."""
    correct = guesses == truth
    length = truth.shape[1]
    rate, low, high = clustered_interval(correct.sum(1), np.full(len(truth), length))
    content_hits = (correct & content).sum()
    return Recovery(
        rate=rate,
        low=low,
        high=high,
        content_rate=float(content_hits / content.sum()) if content.any() else math.nan,
        half_prompts=float(np.mean(correct.sum(1) * 2 >= length)),
        exact_prompts=float(np.mean(correct.all(1))),
        tokens=int(truth.size),
        content_tokens=int(content.sum()),
        prompts=len(truth),
    )
