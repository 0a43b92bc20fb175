"""The narrow interface the generation engine needs from whatever runs the LLM.

An engine that accepts prompt embeddings (vLLM's `prompt_embeds`) can implement it for
multi-GPU serving; the engine, service and metrics stay as they are.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Backend(Protocol):
    hidden_size: int

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        """(n,) ids -> (n, d) clean input embeddings (template tokens, generated tokens)."""

    def prefill(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(T, d) prompt embeddings -> (next-token logits (V,), opaque decoding state)."""

    def decode(self, token_id: int, state: Any) -> tuple[torch.Tensor, Any]:
        """Feed one generated token; return the next logits (V,) and the updated state."""
