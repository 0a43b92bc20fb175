"""What every stage reads, loaded once: the model, the trained adapter, the data split, the
attacker, and the prompt sets each role uses.

Disjoint token sets, so nothing is measured on what it was tuned on:
    public text       the training split: the attacker's own in-domain text (its bigram prior
                      and the pairs its inversion network trains on)
    calibration       held-out prompts the adapter's levels were calibrated on; the baselines
                      are matched to those levels on the same prompts
    attack            held-out continuations, cut as prompts: every reported attack rate
    out of domain     windows of another text (WikiText-2 by default), attacked with the same
                      in-domain attacker: do the levels hold where its prior fits less well?
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..adapter import READER_FILE, Adapter
from ..attacks.mechanisms import Binomial
from ..attacks.suite import Attacker, AttackOptions
from ..attacks.tokenwise import client_table
from ..calibration import CalibratedLevel
from ..errors import InputError
from ..front_end import PosteriorFrontEnd, front_end_of
from ..models import LoadedModel, load_model
from ..paths import shown
from ..train.data import Split, Windows, load_split, read_documents
from ..train.objective import FrozenLM
from ..train.reader import selection_windows
from .checkpoint import Checkpoints
from .config import EvalConfig


@dataclass(frozen=True, eq=False)
class EvalContext:
    config: EvalConfig
    loaded: LoadedModel
    lm: FrozenLM
    adapter: Adapter
    split: Split
    checkpoints: Checkpoints

    @classmethod
    def open(cls, config: EvalConfig, *, resume: bool = False) -> EvalContext:
        """Everything loaded; `resume`: reuse the units a stopped run of the same
        configuration on the same adapter finished (eval.checkpoint)."""
        adapter_dir = Path(config.adapter)
        if not (adapter_dir / "adapter.json").exists():
            raise FileNotFoundError(
                f"{adapter_dir}: no trained adapter; train one with "
                f"`del-server train all --out {adapter_dir}` or pass --adapter DIR"
            )
        torch.manual_seed(config.seed)
        loaded = load_model(config.model)
        adapter = Adapter.load(adapter_dir)
        if not adapter.calibration:
            raise InputError(
                f"{adapter_dir}: the adapter has no calibrated levels to evaluate; give it some "
                f"with `del-server train recalibrate --out {adapter_dir}`"
            )
        split = load_split(config.data, loaded.tokenizer)
        # Text too short for what the run measures is refused before a stage runs or
        # checkpoints are reset.
        _calibration_windows(split, config, adapter)
        _attack_windows(split, config)
        if adapter.reader is not None:
            reader_selection(split, config)
        return cls(
            config=config,
            loaded=loaded,
            lm=FrozenLM(loaded.model, loaded.bos_id),
            adapter=adapter,
            split=split,
            checkpoints=Checkpoints.for_run(
                config.to_dict(),
                # adapter.json pins the digests of every tensor file, the reader's included.
                file_sha256(adapter_dir / "adapter.json"),
                config.out,
                resume=resume,
            ),
        )

    @property
    def embeddings(self) -> torch.Tensor:
        """(V, d) the model's input embedding table."""
        return self.lm.table.detach().float()

    @property
    def vocab_size(self) -> int:
        return self.embeddings.shape[0]

    @property
    def prompt_tokens(self) -> int:
        return self.split.validation.prompts.shape[1]

    def level_mechanism(self, level: CalibratedLevel) -> Binomial:
        """DEL's quantizer at one of the adapter's levels, as the client applies it."""
        adapter = self.adapter
        return Binomial.at(
            mu=level.mu, dim=adapter.projection_dim, bits=level.bits, clip=adapter.clip
        )

    def table(self, adapter: Adapter) -> np.ndarray:
        """(V, k) the client's table for `adapter`, as the client bundle holds it."""
        return client_table(adapter, self.embeddings)

    @cached_property
    def front_end(self) -> PosteriorFrontEnd | None:
        """The adapter's posterior front-end (None: it reads prompts through W_d)."""
        return front_end_of(self.adapter, self.embeddings)

    @cached_property
    def attacker(self) -> Attacker:
        """The server as attacker, as the training pipeline builds it."""
        config = self.config
        options = AttackOptions(
            beam_width=config.beam_width,
            learned_steps=config.inversion_steps,
            learned_batch=config.inversion_batch,
            particles=config.particles,
            prefix_steps=config.prefix_steps,
        )
        return Attacker.of_model(self.loaded.model, self.loaded.bos_id, self.split.train, options)

    def calibration_prompts(self) -> np.ndarray:
        """(P, T) the held-out prompts the adapter's levels were calibrated on (the pipeline's
        rule: the first ones), or the first `calibration_prompts` of them in a smaller run."""
        return _calibration_windows(self.split, self.config, self.adapter).prompts.numpy()

    def attack_prompts(self) -> np.ndarray:
        """(P, T) held-out continuations: text no level was calibrated on."""
        return _attack_windows(self.split, self.config).continuations.numpy()

    @cached_property
    def _ood_stream(self) -> np.ndarray:
        documents = read_documents(self.config.ood_data, flag="--ood-data")
        encodings = self.loaded.tokenizer.encode_batch(documents, add_special_tokens=False)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])

    def ood_prompts(self) -> np.ndarray:
        """(P, T) the first `attack_prompts` back-to-back windows of the out-of-domain text."""
        length, stream = self.prompt_tokens, self._ood_stream
        count = min(self.config.attack_prompts, len(stream) // length)
        if count == 0:
            raise InputError(
                f"--ood-data {self.config.ood_data}: not one {length}-token window of text"
            )
        return stream[: count * length].reshape(count, length)

    def describe(self) -> dict:
        """The model, adapter, data and machine, for the report."""
        adapter = self.adapter
        return {
            "model": {
                "id": self.loaded.model_id,
                "source": shown(self.config.model),
                "hidden_size": adapter.hidden_size,
                "vocab_size": self.vocab_size,
                "parameters": sum(p.numel() for p in self.loaded.model.parameters()),
            },
            "adapter": {
                "path": shown(self.config.adapter),
                "tensors_sha256": file_sha256(Path(self.config.adapter) / "adapter.safetensors"),
                # What is served depends on the reader as much as on the levels' tensors.
                **(
                    {
                        "reader_sha256": file_sha256(Path(self.config.adapter) / READER_FILE),
                        "reader_particles": adapter.reader.particles,
                    }
                    if adapter.reader is not None
                    else {}
                ),
                "projection_dim": adapter.projection_dim,
                "clip": adapter.clip,
                "clip_rule": adapter.metadata.get("clip_rule", ""),
                "soft_prompt_length": _soft_prompt_length(adapter),
                "soft_prompt_steps": adapter.metadata.get("soft_prompt_steps"),
                "levels": [level.to_dict() for level in adapter.calibration],
            },
            "data": {"source": shown(self.config.data), **self.split.describe()},
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
        }


def file_sha256(path: Path) -> str:
    """Ties a report to the exact adapter it measured (a retrained adapter makes it stale)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _soft_prompt_length(adapter: Adapter) -> int | None:
    prompts = list(adapter.soft_prompts.values())
    return int(prompts[0].shape[0]) if prompts else None


_SHORT_TEXT_REMEDY = "use more text (--data) or a smaller run (--quick, --smoke)"


def _calibration_windows(split: Split, config: EvalConfig, adapter: Adapter) -> Windows:
    """The held-out windows the adapter's levels were calibrated on (the first ones)."""
    count = config.calibration_prompts or max(level.prompts for level in adapter.calibration)
    return split.validation.first(
        count, asked_by="the calibration prompts", remedy=_SHORT_TEXT_REMEDY
    )


def _attack_windows(split: Split, config: EvalConfig) -> Windows:
    """The held-out windows whose continuations every reported attack rate is measured on."""
    return split.validation.first(
        config.attack_prompts, asked_by="the attack prompts", remedy=_SHORT_TEXT_REMEDY
    )


def reader_selection(split: Split, config: EvalConfig) -> Windows:
    """The held-out windows after the loss windows, which the blind reader's λ is fitted on."""
    return selection_windows(
        split.validation,
        config.loss_windows,
        remedy=_SHORT_TEXT_REMEDY,
    )
