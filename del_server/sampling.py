"""Choosing the next token and deciding when to stop (one request's sampling state)."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from del_client.sampling import Sampling


class FinishReason(StrEnum):
    LENGTH = "length"
    STOP = "stop"
    EOS = "eos"


# Temperatures below this decode greedily (vLLM's rule): dividing logits by a tinier one
# overflows to inf, and that limit of sampling is the argmax anyway.
GREEDY_BELOW = 1e-5

# splitmix64 (Steele, Lea and Flood 2014): the i-th draw of a request is a hash of its seed and
# i, so a row's noise depends on nothing else, whoever shares its batch.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _uniforms(seeds: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), one per (seed, draw) pair (uint64 arrays)."""
    z = seeds + (draws + np.uint64(1)) * _GAMMA  # wraps modulo 2^64, as splitmix64 does
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass
class Sampler:
    """One request's sampling state: its options, seed and how many tokens it has drawn.

    Its draws come from its own counter-based stream (seed, draw number), so requests never
    share noise and a seeded request draws the same tokens alone or in any batch.
    """

    params: Sampling
    seed: int = field(init=False)
    draws: int = 0

    def __post_init__(self) -> None:
        self.seed = self.params.seed if self.params.seed is not None else secrets.randbits(63)
        self.greedy = self.params.temperature < GREEDY_BELOW

    def __call__(self, logits: torch.Tensor) -> int:
        """logits (V,) -> next token id."""
        return sample([self], logits[None])[0]


def sample(samplers: Sequence[Sampler], logits: torch.Tensor) -> list[int]:
    """The next token of every row of `logits` (rows, V), each with its own sampler, in one
    batched operation: greedy rows take the argmax; the others are tempered, cut to their
    top-k and top-p and drawn by inverting the cumulative distribution at their own uniform.

    A row whose logits are not finite raises ValueError (call it row by row to isolate it).
    """
    tokens = logits.argmax(dim=-1).tolist()
    drawn = [i for i, s in enumerate(samplers) if not s.greedy]
    if not drawn:
        return tokens
    params = [samplers[i].params for i in drawn]
    x = (logits if len(drawn) == len(samplers) else logits[drawn]).float()
    x = x / torch.tensor([p.temperature for p in params])[:, None]
    vocab = x.shape[-1]
    if cut := [j for j, p in enumerate(params) if p.top_k]:
        k = torch.tensor([min(params[j].top_k, vocab) for j in cut])
        rows = x[cut]
        kth = torch.topk(rows, int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
        x[cut] = rows.masked_fill(rows < kth, -math.inf)
    probs = torch.softmax(x, dim=-1)
    if cut := [j for j, p in enumerate(params) if p.top_p < 1]:
        sorted_probs, order = torch.sort(probs[cut], descending=True, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        top_p = torch.tensor([params[j].top_p for j in cut])[:, None]
        sorted_probs[sorted_probs.cumsum(-1) - sorted_probs >= top_p] = 0
        probs[cut] = torch.zeros_like(sorted_probs).scatter(1, order, sorted_probs)
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1]
    if not bool(torch.isfinite(total).all() and (total > 0).all()):
        raise ValueError("the logits of a row are not finite")
    seeds = np.array([samplers[i].seed for i in drawn], dtype=np.uint64)
    draws = np.array([samplers[i].draws for i in drawn], dtype=np.uint64)
    at = torch.from_numpy(_uniforms(seeds, draws)) * total
    picks = torch.searchsorted(cdf, at[:, None], right=True)[:, 0].clamp_(max=vocab - 1)
    stray = probs.gather(1, picks[:, None])[:, 0] == 0  # rounding at the very top of the cdf
    for j in stray.nonzero()[:, 0].tolist():
        picks[j] = probs[j].nonzero()[-1, 0]
    for i, token in zip(drawn, picks.tolist(), strict=True):
        tokens[i] = token
        samplers[i].draws += 1
    return tokens


class TextStream:
    """Turns generated ids into text deltas, holding back what is not yet final.

    Decoding is incremental (`tokenizers`' DecodeStream: each token costs the same however
    long the generation, on the engine thread every request shares); it withholds a trailing
    incomplete UTF-8 sequence itself. Held back here: a tail that could still grow into a
    stop sequence. The stream starts after an anchor token so the first generated token keeps
    its leading space, as it would after the (private) prompt.
    """

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...], anchor_id: int) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._hold = max((len(s) - 1 for s in stop), default=0)
        self._decoder = DecodeStream(ids=[anchor_id], skip_special_tokens=True)
        self._text = ""
        self._sent = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text that became final (may be empty)."""
        searched = max(0, len(self._text) - self._hold)  # no stop ends before the new text
        self._text += self._decoder.step(self._tokenizer, token_id) or ""
        found = [at for at in (self._text.find(s, searched) for s in self._stop) if at != -1]
        if found:
            self.stopped = True
            return self._emit(min(found))
        return self._emit(len(self._text) - self._hold)

    def flush(self) -> str:
        """The rest of the text at the end of generation (nothing after a stop)."""
        return "" if self.stopped else self._emit(len(self._text))

    def _emit(self, end: int) -> str:
        """The text from what was sent up to `end` (nothing when `end` is not past it)."""
        end = max(end, self._sent)
        delta = self._text[self._sent : end]
        self._sent = end
        return delta
