"""What every stage reads, loaded once: the model, the trained adapter, the data split, and
the token sets each role uses.

Three disjoint token sets, so nothing is measured on what it was tuned on:
    public text       the training split: the attacker's own in-domain text, from which it
                      draws (symbols -> token) pairs for its inversion network
    calibration       the held-out prompt tokens the adapter's levels were calibrated on; the
                      baselines are matched to those levels on the same tokens
    attack            held-out continuation tokens: every attack success rate is measured here
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..adapter import Adapter
from ..models import LoadedModel, load_model
from ..train.attacks import client_table
from ..train.data import Split, load_split
from ..train.objective import FrozenLM
from .config import EvalConfig


@dataclass(frozen=True, eq=False)
class EvalContext:
    config: EvalConfig
    loaded: LoadedModel
    lm: FrozenLM
    adapter: Adapter
    split: Split

    @classmethod
    def open(cls, config: EvalConfig) -> EvalContext:
        adapter_dir = Path(config.adapter)
        if not (adapter_dir / "adapter.json").exists():
            raise FileNotFoundError(
                f"{adapter_dir}: no trained adapter; train one with "
                f"`del-server train all --out {adapter_dir}` or pass --adapter DIR"
            )
        torch.manual_seed(config.seed)
        loaded = load_model(config.model)
        return cls(
            config=config,
            loaded=loaded,
            lm=FrozenLM(loaded.model, loaded.bos_id),
            adapter=Adapter.load(adapter_dir),
            split=load_split(config.data, loaded.tokenizer),
        )

    @property
    def embeddings(self) -> torch.Tensor:
        """(V, d) the model's input embedding table."""
        return self.lm.table.detach().float()

    @property
    def vocab_size(self) -> int:
        return self.embeddings.shape[0]

    def table(self, adapter: Adapter) -> np.ndarray:
        """(V, k) the client's table for `adapter`, as the client bundle holds it."""
        return client_table(adapter, self.embeddings)

    def public_tokens(self) -> np.ndarray:
        train = self.split.train
        return torch.cat([train.prompts.reshape(-1), train.continuations.reshape(-1)]).numpy()

    def calibration_tokens(self) -> np.ndarray:
        """The held-out tokens the adapter's levels were calibrated on (the pipeline's rule),
        or the first `calibration_tokens` of them in a smaller run."""
        count = self.config.calibration_tokens or max(
            (level["tokens"] for level in self.adapter.calibration), default=4000
        )
        return self.split.validation.prompts.reshape(-1)[:count].numpy()

    def attack_tokens(self) -> np.ndarray:
        continuations = self.split.validation.continuations.reshape(-1)
        return continuations[: self.config.attack_tokens].numpy()

    def describe(self) -> dict:
        """The model, adapter, data and machine, for the report."""
        adapter = self.adapter
        return {
            "model": {
                "id": self.loaded.model_id,
                "source": self.config.model,
                "hidden_size": adapter.hidden_size,
                "vocab_size": self.vocab_size,
                "parameters": sum(p.numel() for p in self.loaded.model.parameters()),
            },
            "adapter": {
                "path": self.config.adapter,
                "tensors_sha256": _sha256(Path(self.config.adapter) / "adapter.safetensors"),
                "projection_dim": adapter.projection_dim,
                "clip": adapter.clip,
                "clip_rule": adapter.metadata.get("clip_rule", ""),
                "soft_prompt_length": _soft_prompt_length(adapter),
                "soft_prompt_steps": adapter.metadata.get("soft_prompt_steps"),
                "levels": adapter.calibration,
            },
            "data": {"source": self.config.data, **self.split.describe()},
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
        }


def _sha256(path: Path) -> str:
    """Ties a report to the exact adapter it measured (a retrained adapter makes it stale)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _soft_prompt_length(adapter: Adapter) -> int | None:
    prompts = list(adapter.soft_prompts.values())
    return int(prompts[0].shape[0]) if prompts else None
