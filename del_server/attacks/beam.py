"""The strongest attack we run: the provider's own LLM as the prior over prompts (BeamClean's
threat model, arXiv 2505.13758).

A beam search over prompts scores each hypothesis by

    log P_LM(v_1..v_t | BOS) + Σ_s log P(symbols_s | v_s)      (exact, so far)

and ranks partial hypotheses by that score plus the bigram lattice's backward message β_t(v_t)
(what the symbols still to come say about them), so a prefix is not kept or dropped on its
past alone. Every beam of every prompt advances in one batched forward pass with a shared KV
cache that is reordered as beams are chosen. Candidates per position are the lattice's.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from .sequence import Lattice

DEFAULT_WIDTH = 64


@torch.no_grad()
def beam_guesses(
    model: PreTrainedModel,
    bos_id: int | None,
    lattice: Lattice,
    *,
    width: int = DEFAULT_WIDTH,
) -> np.ndarray:
    """(P, T) the best complete hypothesis of each prompt."""
    prompts, length, keep = lattice.candidates.shape
    width = min(width, keep)
    lookahead = lattice.backward()  # (P, T, M)
    device = next(model.parameters()).device
    rows = prompts * width
    # Every prompt starts with `width` copies of the empty hypothesis; all but one are dead
    # (score −inf), so the first step expands exactly one.
    score = torch.full((prompts, width), float("-inf"))
    score[:, 0] = 0.0
    tokens = torch.zeros(prompts, width, 0, dtype=torch.long)
    cache = DynamicCache()
    context = torch.full((rows, 1), bos_id if bos_id is not None else 0, dtype=torch.long)
    next_log_p = None  # without BOS, the first token's prior is the bigram's start distribution
    for t in range(length):
        if t > 0 or bos_id is not None:
            logits = model(input_ids=context.to(device), cache=cache, use_cache=True)
            cache = logits.cache
            next_log_p = logits.logits[:, -1].float().log_softmax(dim=-1).cpu()  # (rows, V)
        candidates = lattice.candidates[:, t]  # (P, M)
        if next_log_p is None:
            prior = lattice.start[:, None, :].expand(prompts, width, keep)
        else:
            index = candidates.repeat_interleave(width, dim=0)  # (rows, M)
            prior = next_log_p.gather(-1, index).view(prompts, width, keep)
        total = score[:, :, None] + prior + lattice.emission[:, t][:, None, :]  # (P, W, M)
        ranked = (total + lookahead[:, t][:, None, :]).view(prompts, -1)
        chosen = ranked.topk(width, dim=-1).indices  # (P, W) over width × keep
        source, pick = chosen // keep, chosen % keep
        score = total.view(prompts, -1).gather(-1, chosen)
        picked = candidates.gather(-1, pick)  # (P, W) token ids
        tokens = torch.cat(
            [tokens.gather(1, source[..., None].expand_as(tokens)), picked[..., None]], 2
        )
        order = (source + torch.arange(prompts)[:, None] * width).reshape(-1)
        if cache.get_seq_length() > 0:
            cache.reorder_cache(order.to(device))
        context = picked.reshape(rows, 1)
    best = score.argmax(dim=-1)  # (P,)
    return tokens[torch.arange(prompts), best].numpy()
