"""Any Hugging Face causal LM or encoder, by local path or hub id, through the Auto classes."""

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


def is_causal(architectures: list[str] | None) -> bool:
    """Whether a config's architectures are a causal LM's (generation) rather than an encoder's.

    A checkpoint saved from BertModel names "BertModel"; one saved from a causal LM class names
    "…ForCausalLM" (or GPT-2's "…LMHeadModel"); a config that names none is taken as causal,
    the kind DEL served first.
    """
    if not architectures:
        return True
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def load_hf_model(source: str, *, dtype: torch.dtype) -> LoadedModel:
    """The model in eval mode and its fast tokenizer's `tokenizers.Tokenizer`.

    A causal LM loads with its LM head; an encoder (BERT and the like) loads bare, without a
    task head (the adapter brings one), with its [CLS] and [SEP] as the template the server
    adds around a prompt.

    The client bundle carries the fast tokenizer's JSON, so slow (Python-only) tokenizers
    are refused: the client could not reproduce them without transformers. Its padding and
    truncation are turned off: a prompt reaches the model as written, not padded to a fixed
    length with [PAD]s nor cut.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    local = not Path(source).exists() and cache_only(source)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    if not tokenizer.is_fast:
        raise ValueError(f"{source}: a fast tokenizer (tokenizer.json) is required")
    config = AutoConfig.from_pretrained(source, local_files_only=local)
    model_id = Path(source).name if Path(source).exists() else source
    plain = plain_tokenizer(tokenizer.backend_tokenizer)
    if is_causal(config.architectures):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local)
        return LoadedModel(
            model_id=model_id,
            model=model.eval(),
            tokenizer=plain,
            bos_id=tokenizer.bos_token_id,
            eos_id=tokenizer.eos_token_id,
        )
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError(f"{source}: an encoder's tokenizer must define [CLS] and [SEP] tokens")
    model = AutoModel.from_pretrained(source, config=config, dtype=dtype, local_files_only=local)
    return LoadedModel(
        model_id=model_id,
        model=model.eval(),
        tokenizer=plain,
        bos_id=None,
        eos_id=None,
        cls_id=tokenizer.cls_token_id,
        sep_id=tokenizer.sep_token_id,
    )
