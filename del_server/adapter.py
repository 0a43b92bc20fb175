"""The adapter bundle: everything model-specific that DEL adds around a frozen LLM (DESIGN §4).

    down  W_p (k, d)   projection, used once to build the client's table Z = (E − mean)·W_pᵀ
    up    W_d (d, k)   de-projection, h = x̂·W_dᵀ + mean on the server
    mean  (d,)         centre of the embedding table: the de-projection bias
    clip  c            belongs with the projection; chosen from the distribution of |Z|
    norm_bound         optional cap on ‖h‖ after de-projection (noise inflates norms)
    soft prompts       (m, d) per privacy level, keyed by the per-token μ they were trained at
    prior              optional: a bigram prior of public text; with it the server reads
                       prompts through the posterior front-end (front_end.py), not W_d, and
    front ends         per soft prompt, that front-end's trained parameters (same μ keys)
    reader             optional, with a prior: the particle reader's prefix (m, d), the soft
                       prompt trained with nothing sent, its particle count and, per level,
                       how often it ignores the prompt; with it the server decodes every
                       private prompt by the LLM's posterior and continues one particle drawn
                       by weight (particle_reader.py)
    calibration        calibration.CalibratedLevel records, filled by training: a target
                       attack rate's μ and what measured it, and (optional) its utility as
                       served against sending nothing
    task               classification only: the task's labels and a head per privacy level
                       (classification.py: the encoder's pooled output and the decoded
                       coordinates' moments -> one hidden layer -> label logits), trained at
                       that level's noise, and one for clean (raw) inputs

Stored as `adapter.safetensors` (tensors) + `adapter.json` (everything else, with the
SHA-256 of the tensor file and of the embedding table it was built from), so loading never
unpickles and a mismatched model is caught before serving. The reader's prefix has a file of
its own, `reader.safetensors` (digest in adapter.json too): it is trained without the
mechanism and can be added or retrained without touching the levels' tensors, which
reports (docs/eval) pin by digest.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .attacks.sequence import BigramPrior
from .calibration import CalibratedLevel
from .errors import InputError

FORMAT = "del-adapter/1"
DEFAULT_CLIP_QUANTILE = 0.98


def embedding_digest(embeddings: torch.Tensor) -> str:
    """SHA-256 of a float32 embedding table: ties an adapter to the model it was built for."""
    return hashlib.sha256(embeddings.detach().float().contiguous().numpy().tobytes()).hexdigest()


# A level's trained posterior front-end (front_end.py): temperature, gate, "unknown" vector.
FRONT_END_TENSORS = ("log_sharpness", "gate", "unknown")
HEAD_TENSORS = ("hidden_weight", "hidden_bias", "weight", "bias")


@dataclass(frozen=True, eq=False)
class Head:
    """Classifier features (…, F) -> label logits (…, L), through one hidden GELU layer."""

    hidden_weight: torch.Tensor  # (H, F)
    hidden_bias: torch.Tensor  # (H,)
    weight: torch.Tensor  # (L, H)
    bias: torch.Tensor  # (L,)

    @property
    def inputs(self) -> int:
        return self.hidden_weight.shape[1]

    @property
    def outputs(self) -> int:
        return self.weight.shape[0]

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        dtype = features.dtype
        hidden = features @ self.hidden_weight.T.to(dtype) + self.hidden_bias.to(dtype)
        return torch.nn.functional.gelu(hidden) @ self.weight.T.to(dtype) + self.bias.to(dtype)


@dataclass(frozen=True, eq=False)
class ClassificationTask:
    """What turns an encoder into a classifier for one task, per privacy level."""

    name: str  # what it was trained for, e.g. "sst2"
    labels: tuple[str, ...]
    heads: dict[float, Head] = field(default_factory=dict)  # μ -> head
    clean_head: Head | None = None  # for raw (unprivatized) embeddings

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"a task needs two or more distinct labels, got {self.labels}")
        for head in self.all_heads():
            if head.outputs != len(self.labels) or head.bias.shape != (len(self.labels),):
                raise ValueError(
                    f"a head of task {self.name!r} has {head.outputs} outputs for "
                    f"{len(self.labels)} labels"
                )

    def all_heads(self) -> list[Head]:
        return [*self.heads.values(), *([self.clean_head] if self.clean_head else [])]

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors by name, their JSON description) for Adapter.save."""
        tensors, heads = {}, []
        named = [(mu, f"head.{i}", h) for i, (mu, h) in enumerate(sorted(self.heads.items()))]
        if self.clean_head is not None:
            named.append((None, "head.clean", self.clean_head))
        for mu, name, head in named:
            tensors |= {f"{name}.{part}": getattr(head, part) for part in HEAD_TENSORS}
            heads.append({"mu": mu, "tensor": name})
        return tensors, {"name": self.name, "labels": list(self.labels), "heads": heads}

    @classmethod
    def from_tensors(cls, description: dict, tensors: dict[str, torch.Tensor]):
        def head(name: str) -> Head:
            return Head(*(tensors[f"{name}.{part}"] for part in HEAD_TENSORS))

        found = {entry["mu"]: head(entry["tensor"]) for entry in description["heads"]}
        clean = found.pop(None, None)
        return cls(description["name"], tuple(description["labels"]), found, clean)


@dataclass(frozen=True, eq=False)
class Adapter:
    down: torch.Tensor  # (k, d)
    up: torch.Tensor  # (d, k)
    mean: torch.Tensor  # (d,)
    clip: float
    norm_bound: float | None = None
    soft_prompts: dict[float, torch.Tensor] = field(default_factory=dict)  # μ -> (m, d)
    calibration: tuple[CalibratedLevel, ...] = ()  # most private first
    metadata: dict = field(default_factory=dict)
    task: ClassificationTask | None = None  # None: generation
    prior: BigramPrior | None = None  # None: the linear front-end (W_d)
    front_ends: dict[float, dict[str, torch.Tensor]] = field(default_factory=dict)  # μ -> params
    reader: ParticleReading | None = None  # None: the level's front-end and soft prompt

    def __post_init__(self) -> None:
        object.__setattr__(self, "calibration", tuple(self.calibration))
        if not all(isinstance(level, CalibratedLevel) for level in self.calibration):
            raise TypeError("calibration holds CalibratedLevel records (from_dict reads a dict)")
        k, d = self.down.shape
        if self.up.shape != (d, k) or self.mean.shape != (d,):
            raise ValueError(
                f"adapter shapes disagree: down {tuple(self.down.shape)}, up {tuple(self.up.shape)}, "
                f"mean {tuple(self.mean.shape)}"
            )
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"adapter clip must be finite and > 0, got {self.clip}")
        for mu, prompt in self.soft_prompts.items():
            if prompt.ndim != 2 or prompt.shape[1] != d:
                raise ValueError(f"soft prompt for mu={mu} must be (m, {d}), got {prompt.shape}")
        if self.front_ends and self.prior is None:
            raise ValueError("front-end parameters without a prior: they belong to the posterior")
        for mu, parameters in self.front_ends.items():
            shapes = {name: tuple(parameters[name].shape) for name in FRONT_END_TENSORS}
            if mu not in self.soft_prompts or shapes != {
                "log_sharpness": (),
                "gate": (2,),
                "unknown": (d,),
            }:
                raise ValueError(
                    f"front-end parameters for mu={mu} have no soft prompt or {shapes}"
                )
        if self.reader is not None and (
            self.prior is None
            or self.reader.prefix.shape[1:] != (d,)
            or self.reader.particles < 1
            or not set(self.reader.ignore_prompt) <= set(self.soft_prompts)
        ):
            raise ValueError(
                f"the particle reader needs a prior, a (m, {d}) prefix, at least one particle "
                f"and levels of this adapter, got prefix {tuple(self.reader.prefix.shape)}, "
                f"{self.reader.particles} particles, levels {sorted(self.reader.ignore_prompt)}"
            )
        for head in self.task.all_heads() if self.task else []:
            if head.inputs != d + 2 * k:  # classification.features: pooled output, moments
                raise ValueError(f"a head takes {head.inputs} inputs, not d + 2k = {d + 2 * k}")

    @property
    def front_end(self) -> str:
        """ "posterior" when the adapter holds a prior, else "linear" (front_end.py)."""
        return "linear" if self.prior is None else "posterior"

    @property
    def projection_dim(self) -> int:
        return self.down.shape[0]

    def fits(self, embeddings: torch.Tensor) -> bool:
        """Whether the adapter was built for a model with these input embeddings (one that
        does not record them fits any)."""
        expected = self.metadata.get("embedding_sha256")
        return expected is None or expected == embedding_digest(embeddings)

    @property
    def hidden_size(self) -> int:
        return self.down.shape[1]

    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(V, d) -> (V, k): the client's table Z."""
        return (embeddings - self.mean) @ self.down.T

    def deproject(self, x_hat: torch.Tensor) -> torch.Tensor:
        """(T, k) decoded symbols -> (T, d) inputs for the LLM."""
        h = x_hat.to(self.up.dtype) @ self.up.T + self.mean
        if self.norm_bound is not None:
            norms = h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            h = h * (self.norm_bound / norms).clamp(max=1.0)
        return h

    def soft_prompt_for(self, mu: float) -> tuple[float, torch.Tensor] | None:
        """The prompt trained at exactly `mu`, else at the nearest more private (smaller) μ."""
        eligible = [level for level in self.soft_prompts if level <= mu * (1 + 1e-9)]
        if not eligible:
            return None
        level = max(eligible)
        return level, self.soft_prompts[level]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"down": self.down, "up": self.up, "mean": self.mean}
        levels = []
        for index, (mu, prompt) in enumerate(sorted(self.soft_prompts.items())):
            tensors[f"soft_prompt.{index}"] = prompt
            levels.append({"mu": mu, "tensor": f"soft_prompt.{index}", "length": prompt.shape[0]})
            if mu in self.front_ends:
                levels[-1]["front_end"] = f"front_end.{index}"
                tensors |= {f"front_end.{index}.{k}": v for k, v in self.front_ends[mu].items()}
        if self.prior is not None:
            tensors |= {f"prior.{name}": getattr(self.prior, name) for name in PRIOR_TENSORS}
        task = None
        if self.task is not None:
            head_tensors, task = self.task.tensors()
            tensors.update(head_tensors)
        tensor_path = directory / "adapter.safetensors"
        save_file({name: _stored(t) for name, t in tensors.items()}, tensor_path)
        description = {
            "format": FORMAT,
            "projection_dim": self.projection_dim,
            "hidden_size": self.hidden_size,
            "clip": self.clip,
            "norm_bound": self.norm_bound,
            "soft_prompts": levels,
            "calibration": [level.to_dict() for level in self.calibration],
            "metadata": self.metadata,
            **({"task": task} if task is not None else {}),
            **({"prior": {"smoothing": self.prior.smoothing}} if self.prior is not None else {}),
            **({"reader": self.reader.save(directory)} if self.reader is not None else {}),
            "tensors_sha256": hashlib.sha256(tensor_path.read_bytes()).hexdigest(),
        }
        (directory / "adapter.json").write_text(json.dumps(description, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Adapter:
        directory = Path(directory)
        description = json.loads((directory / "adapter.json").read_text())
        if description.get("format") != FORMAT:
            raise ValueError(
                f"{directory}: adapter format {description.get('format')!r}, expected {FORMAT!r}"
            )
        tensor_path = directory / "adapter.safetensors"
        if hashlib.sha256(tensor_path.read_bytes()).hexdigest() != description["tensors_sha256"]:
            raise ValueError(f"{tensor_path}: digest differs from adapter.json (corrupt or edited)")
        tensors = load_file(tensor_path)
        prior = None
        if "prior" in description:
            parts = {name: tensors[f"prior.{name}"] for name in PRIOR_TENSORS}
            prior = BigramPrior(**parts, smoothing=description["prior"]["smoothing"])
        front_ends = {
            level["mu"]: {k: tensors[f"{level['front_end']}.{k}"] for k in FRONT_END_TENSORS}
            for level in description["soft_prompts"]
            if "front_end" in level
        }
        return cls(
            down=tensors["down"],
            up=tensors["up"],
            mean=tensors["mean"],
            clip=description["clip"],
            norm_bound=description["norm_bound"],
            soft_prompts={lvl["mu"]: tensors[lvl["tensor"]] for lvl in description["soft_prompts"]},
            calibration=tuple(
                CalibratedLevel.from_dict(level, directory, index)
                for index, level in enumerate(description["calibration"])
            ),
            metadata=description["metadata"],
            task=(
                ClassificationTask.from_tensors(description["task"], tensors)
                if "task" in description
                else None
            ),
            prior=prior,
            front_ends=front_ends,
            reader=(
                ParticleReading.load(directory, description["reader"])
                if "reader" in description
                else None
            ),
        )


PRIOR_TENSORS = ("log_start", "pair_keys", "pair_counts", "row_totals")
READER_FILE = "reader.safetensors"


@dataclass(frozen=True, eq=False)
class ParticleReading:
    """What the particle reader needs beyond the model and the prior."""

    prefix: torch.Tensor  # (m, d): the LLM reads the decoded prompt after it
    particles: int  # per prompt: the served posterior predictive's resolution
    # level μ -> probability of continuing after the prefix alone (train/reader.py); a μ that
    # is no level: 0
    ignore_prompt: dict[float, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not all(0 <= p <= 1 for p in self.ignore_prompt.values()):
            raise ValueError(f"ignore_prompt holds probabilities, got {self.ignore_prompt}")

    def save(self, directory: Path) -> dict:
        """Writes reader.safetensors; -> its entry in adapter.json."""
        path = directory / READER_FILE
        save_file({"prefix": _stored(self.prefix)}, path)
        return {
            "file": READER_FILE,
            "particles": self.particles,
            "length": self.prefix.shape[0],
            "ignore_prompt": [
                {"mu": mu, "probability": p} for mu, p in sorted(self.ignore_prompt.items())
            ],
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }

    @classmethod
    def load(cls, directory: Path, entry: dict) -> ParticleReading:
        path = directory / entry["file"]
        if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            raise ValueError(f"{path}: digest differs from adapter.json (corrupt or edited)")
        ignore = {level["mu"]: level["probability"] for level in entry["ignore_prompt"]}
        return cls(load_file(path)["prefix"], entry["particles"], ignore)


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    """As saved: weights in float32; integer keys and float64 counts exactly as they are."""
    keep = not tensor.is_floating_point() or tensor.dtype == torch.float64
    return tensor.detach().contiguous() if keep else tensor.detach().contiguous().float()


def check_projection_dim(dim: int, width: int) -> None:
    """A projection of a model `width` wide keeps 1..width dimensions. The message names no
    flag: `train --dim`, `serve --projection-dim` and `eval-frontier-nlu --points` all set it."""
    if not 0 < dim <= width:
        raise InputError(f"projection dim {dim} is outside 1..{width}, the model's embedding width")


def pca_adapter(
    embeddings: torch.Tensor, *, dim: int, clip_quantile: float = DEFAULT_CLIP_QUANTILE
) -> Adapter:
    """The training-free default: PCA of the centred embedding table (DESIGN §5.1).

    W_p holds the top-`dim` principal directions; with orthonormal rows its pseudo-inverse
    is its transpose. The clip is the `clip_quantile` quantile of |Z| over the vocabulary,
    so it scales with the model instead of being a constant tuned for another width.
    """
    table = embeddings.detach().double()
    check_projection_dim(dim, table.shape[1])
    mean = table.mean(dim=0)
    _, _, vh = torch.linalg.svd(table - mean, full_matrices=False)
    # Fix each component's sign (largest coordinate positive) so the result is reproducible.
    signs = torch.sign(vh[:dim].gather(1, vh[:dim].abs().argmax(dim=1, keepdim=True)))
    down = (vh[:dim] * signs).float()  # (k, d)
    z = (table.float() - mean.float()) @ down.T
    clip = float(torch.quantile(z.abs().flatten(), clip_quantile))
    return Adapter(
        down=down,
        up=down.T.contiguous(),
        mean=mean.float(),
        clip=clip,
        metadata={
            "projection": "pca",
            "clip_rule": f"quantile {clip_quantile} of |Z| over the vocabulary",
            "embedding_sha256": embedding_digest(embeddings),
        },
    )
