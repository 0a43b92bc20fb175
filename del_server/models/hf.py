"""Any Hugging Face causal LM, by local path or hub id, through the Auto classes."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import LoadedModel


def load_hf_model(source: str, *, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """The model in eval mode and its fast tokenizer's `tokenizers.Tokenizer`.

    The client bundle carries the fast tokenizer's JSON, so slow (Python-only) tokenizers
    are refused: the client could not reproduce them without transformers.
    """
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.is_fast:
        raise ValueError(f"{source}: a fast tokenizer (tokenizer.json) is required")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).eval()
    return LoadedModel(
        model_id=Path(source).name if Path(source).exists() else source,
        model=model,
        tokenizer=tokenizer.backend_tokenizer,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
    )
