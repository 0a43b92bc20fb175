"""Any Hugging Face causal LM, by local path or hub id, through the Auto classes."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import HfApi, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from del_client.bundle import plain_tokenizer

from . import LoadedModel, ModelSourceError

if TYPE_CHECKING:
    import torch

HUB_TIMEOUT_S = 10.0  # one request to the hub, before anything downloads


def is_hub_id(source: str) -> bool:
    """Whether `source` could name a hub model (org/name), rather than a local path."""
    if source.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


@functools.cache
def cache_only(repo_id: str) -> bool:
    """Whether `repo_id` must load from the local cache alone, the hub being out of reach.

    transformers retries an unreachable hub for about a minute before it gives up, for a
    model that may not exist at all; one request with a short timeout settles it first. A
    model that the hub does not know, or that is neither reachable nor cached, fails here.
    """
    import httpx2  # huggingface_hub's HTTP client: its errors are what an unreachable hub raises

    cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    if is_offline_mode():
        if not cached:
            raise ModelSourceError(
                f"{repo_id} is neither a local path nor in the Hugging Face cache, and "
                "HF_HUB_OFFLINE is set: download it first, or give a local directory"
            )
        return True
    try:
        HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise ModelSourceError(
            f"{repo_id} is neither a local path nor a model on the Hugging Face hub "
            "(a private one needs HF_TOKEN)"
        ) from None
    except httpx2.TransportError as exc:
        if not cached:
            raise ModelSourceError(
                f"{repo_id} is neither a local path nor in the Hugging Face cache, and the "
                f"hub is unreachable ({exc}): give a local directory"
            ) from None
        return True
    return False


def load_hf_model(source: str, *, dtype: torch.dtype) -> LoadedModel:
    """The model in eval mode and its fast tokenizer's `tokenizers.Tokenizer`.

    The client bundle carries the fast tokenizer's JSON, so slow (Python-only) tokenizers
    are refused: the client could not reproduce them without transformers. Its padding and
    truncation are turned off: a prompt reaches the model as written, not padded to a fixed
    length with [PAD]s nor cut.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = not Path(source).exists() and cache_only(source)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    if not tokenizer.is_fast:
        raise ValueError(f"{source}: a fast tokenizer (tokenizer.json) is required")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local)
    model = model.eval()
    return LoadedModel(
        model_id=Path(source).name if Path(source).exists() else source,
        model=model,
        tokenizer=plain_tokenizer(tokenizer.backend_tokenizer),
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
    )
