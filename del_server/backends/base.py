"""The narrow interface the generation engine needs from whatever runs the LLM.

The requests that arrive together are prefilled together (`prefill_many`), then join a
`DecodeBatch` whose rows advance together, one forward pass per round. An engine that accepts prompt embeddings
(vLLM's `prompt_embeds`) can implement the same two types for multi-GPU serving; the engine,
service and metrics stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch


class DecodeBatch(Protocol):
    """Prefilled sequences decoded together; row i is the i-th sequence added and still kept."""

    @property
    def size(self) -> int: ...

    def add(self, state: Any) -> None:
        """Append the sequences of a state `Backend.prefill` or `prefill_many` returned as the
        last rows, in order. All or nothing: the batch is unchanged when it fails."""

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows, in this order (the others finished or were cancelled)."""

    def decode(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Feed each row its last generated token; return the next logits (size, V)."""


class Backend(Protocol):
    hidden_size: int

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        """(n,) ids -> (n, d) clean input embeddings (template tokens, generated tokens)."""

    def prefill(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(T, d) prompt embeddings -> (next-token logits (V,), state for `DecodeBatch.add`)."""

    def prefill_many(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """[(T_i, d)] prompts -> (next-token logits (n, V), one state for `DecodeBatch.add`)."""

    def new_batch(self) -> DecodeBatch:
        """An empty batch for this model."""
