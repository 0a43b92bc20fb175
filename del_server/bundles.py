"""Client bundles the server publishes: the private one (Z) and, if enabled, the raw one (E)."""

from __future__ import annotations

import torch

from del_client.bundle import ClientBundle

from .adapter import Adapter
from .models import LoadedModel


def client_bundle(loaded: LoadedModel, adapter: Adapter) -> ClientBundle:
    """Tokenizer + Z = (E − mean)·W_pᵀ + clip: everything a client needs, no LLM weights."""
    with torch.no_grad():
        table = adapter.project(loaded.embeddings.float()).numpy()  # (V, k)
    return ClientBundle(
        model_id=loaded.model_id,
        tokenizer=loaded.tokenizer,
        table=table,
        clip=adapter.clip,
        bos_id=loaded.bos_id,
        eos_id=loaded.eos_id,
    )


def raw_bundle(loaded: LoadedModel) -> ClientBundle:
    """The unprojected table E for the no-privacy baseline: no clip, no projection."""
    with torch.no_grad():
        table = loaded.embeddings.float().numpy()  # (V, d)
    return ClientBundle(
        model_id=loaded.model_id,
        tokenizer=loaded.tokenizer,
        table=table,
        bos_id=loaded.bos_id,
        eos_id=loaded.eos_id,
        mechanism="raw",
    )
