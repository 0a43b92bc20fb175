"""Choosing the next token and deciding when to stop (one request's sampling state)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from tokenizers import Tokenizer

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

    Held back: a trailing incomplete UTF-8 sequence (decoded as U+FFFD) and a tail that could
    still grow into a stop sequence. Text is decoded after an anchor token so the first
    generated token keeps its leading space, as it would after the (private) prompt.
    """

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...], anchor_id: int) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._anchor = [anchor_id]
        self._anchor_len = len(tokenizer.decode(self._anchor))
        self._ids: list[int] = []
        self._sent = 0
        self.stopped = False

    def _text(self) -> str:
        return self._tokenizer.decode(self._anchor + self._ids)[self._anchor_len :]

    def push(self, token_id: int) -> str:
        """Add a token; return the text that became final (may be empty)."""
        self._ids.append(token_id)
        text = self._text()
        for stop in self._stop:
            at = text.find(stop)
            if at != -1:
                self.stopped = True
                return self._emit(text[:at])
        hold = max((len(s) - 1 for s in self._stop), default=0)
        end = len(text) - hold
        while end > self._sent and text[end - 1] == "\ufffd":
            end -= 1
        return self._emit(text[:end])

    def flush(self) -> str:
        """The rest of the text at the end of generation (nothing after a stop)."""
        return "" if self.stopped else self._emit(self._text())

    def _emit(self, text: str) -> str:
        delta = text[self._sent :]
        self._sent = max(self._sent, len(text))
        return delta
