"""Choosing the next token and deciding when to stop (one request's sampling state)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from enum import StrEnum

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


@dataclass
class Sampler:
    """Draws tokens for one request with its own generator, so requests never share noise."""

    params: Sampling
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        seed = self.params.seed if self.params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """logits (V,) -> next token id."""
        p = self.params
        if p.temperature < GREEDY_BELOW:
            return int(torch.argmax(logits))
        logits = logits.float() / p.temperature
        if p.top_k:
            kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            drop = sorted_probs.cumsum(0) - sorted_probs >= p.top_p
            sorted_probs[drop] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))


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
