"""Per-token evidence and the attacks that look at one token at a time.

The exact log-likelihood matrix log P(symbols of position t | token v) over the whole vocabulary
is what every likelihood-based attack starts from: the per-token likelihood attack takes its
argmax, the sequence attacks (sequence.py, beam.py) combine it with a language prior.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..adapter import Adapter

CHUNK = 2048  # attacked tokens scored at once: bounds the (chunk, V) score matrix
IMPOSSIBLE = -1e4  # log-probability floor: e^-10000 is zero for any attack


def client_table(adapter: Adapter, embeddings: torch.Tensor) -> np.ndarray:
    """Z as the client bundle holds it: (V, k) float32."""
    with torch.no_grad():
        return adapter.project(embeddings.float()).numpy().astype(np.float32)


def log_likelihood_matrix(log_table: np.ndarray, symbols: np.ndarray) -> torch.Tensor:
    """(V, k, alphabet) log P(symbol | coordinate of v), (..., k) symbols -> (..., V) float32
    log P(all k symbols | v): the coordinates are privatized independently, so it is a sum.

    The sum is a product of the one-hot symbols with the flattened table; an impossible symbol
    (log P = −inf) is floored at IMPOSSIBLE so that 0·(−inf) cannot turn into NaN.
    """
    vocab, dim, alphabet = log_table.shape
    table = torch.from_numpy(np.maximum(log_table, IMPOSSIBLE)).reshape(vocab, -1).float()
    flat = torch.from_numpy(np.ascontiguousarray(symbols).reshape(-1, dim)).long()
    rows = [
        F.one_hot(flat[start : start + CHUNK], alphabet).flatten(1).float() @ table.T
        for start in range(0, len(flat), CHUNK)
    ]
    scores = torch.cat(rows) if rows else table.new_zeros(0, vocab)
    return scores.reshape(*symbols.shape[:-1], vocab)


def likelihood_guesses(log_table: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """(..., k) symbols -> (...) ids maximising the likelihood: a uniform prior."""
    return log_likelihood_matrix(log_table, symbols).argmax(dim=-1).numpy()


def nearest_neighbour_guesses(
    adapter: Adapter, embeddings: torch.Tensor, received: np.ndarray
) -> np.ndarray:
    """(..., k) decoded symbols -> (...) ids of the embeddings closest in cosine after
    de-projection (the paper's attack)."""
    vocabulary = F.normalize(embeddings.float(), dim=-1)
    flat = received.reshape(-1, received.shape[-1])
    guesses = []
    with torch.no_grad():
        for start in range(0, len(flat), CHUNK):
            h = adapter.deproject(torch.from_numpy(flat[start : start + CHUNK]))
            guesses.append((F.normalize(h.float(), dim=-1) @ vocabulary.T).argmax(dim=-1))
    return torch.cat(guesses).numpy().reshape(received.shape[:-1])


def exact_lookup_guesses(embeddings: torch.Tensor, received: np.ndarray) -> np.ndarray:
    """(n, d) raw embeddings -> (n,) ids of the closest rows in Euclidean distance: what a
    server does with the raw mechanism. Computed directly in float64: the byte-fallback rows
    of a small model differ by ~1e-4, below what cosine or the matmul form of the distance
    resolves."""
    with torch.no_grad():
        distances = torch.cdist(
            torch.from_numpy(received).double(),
            embeddings.double(),
            compute_mode="donot_use_mm_for_euclid_dist",
        )
    return distances.argmin(dim=-1).numpy()
