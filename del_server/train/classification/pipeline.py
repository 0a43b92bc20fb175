"""`del-server train classify`: every stage for one encoder and one task, in order.

    projection   W_p, W_d, a soft prompt and a head trained together through the frozen
                 encoder, with the mechanism's noise at `projection_mu` in the loop; the clip
                 fixed at 1 (W_p's scale is what training moves), so what was trained is what
                 is served
    calibrate    μ per target attack rate, against every attack that runs without a causal
                 LM (a WordPiece bigram prior from the training sentences as the language)
    levels       per level, its soft prompt and head fine-tuned at its own noise
    clean head   a head for raw (unprivatized) embeddings: the no-privacy mechanism
    report       dev accuracy per level (several noise draws), training.json, TRAINING.md

The result is an adapter with a task: `del-server serve --model M --adapter out` serves
Classify. Checkpoints go to out/checkpoints; `resume=True` picks every stage up.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from del_client.mechanism import PrivacySpec

from ...adapter import Adapter, ClassificationTask, LinearHead, pca_adapter
from ...attacks.suite import Attacker, AttackOptions
from ...models import LoadedModel, load_model
from ..calibrate import calibrate
from ..defaults import DEFAULT_TARGETS
from ..labelled import LabelledData, load_labelled
from ..loop import loss_summary, optimize
from .objective import NoisyPath

EVAL_BATCH = 64


@dataclass(frozen=True)
class ClassifyConfig:
    model: str
    data: str
    out: Path
    dim: int = 4
    bits: int = 2
    projection_mu: float = 4.0
    projection_steps: int = 600
    level_steps: int = 300
    soft_prompt_length: int = 4
    batch: int = 32
    lr: float = 3e-3
    targets: tuple[float, ...] = DEFAULT_TARGETS
    calibration_prompts: int = 250
    calibration_length: int = 16  # tokens per calibration window
    inversion_steps: int = 400
    held_out: int = 2000  # training rows kept back: calibration text
    eval_seeds: tuple[int, ...] = (0, 1, 2)
    seed: int = 0
    resume: bool = False
    command: str = ""


@dataclass
class ClassifyBench:
    """What every stage needs, loaded once."""

    config: ClassifyConfig
    loaded: LoadedModel
    path: NoisyPath
    data: LabelledData
    timings: dict[str, float] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def open(cls, config: ClassifyConfig) -> ClassifyBench:
        torch.manual_seed(config.seed)
        (config.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        loaded = load_model(config.model)
        if not loaded.is_encoder:
            raise ValueError(f"{config.model} is a causal LM: classification trains an encoder")
        path = NoisyPath(loaded.model, cls_id=loaded.cls_id, sep_id=loaded.sep_id)
        data = load_labelled(config.data, loaded.tokenizer, held_out=config.held_out)
        return cls(config, loaded, path, data)

    def spec(self, adapter: Adapter, mu: float) -> PrivacySpec:
        return PrivacySpec.from_mu(
            mu=mu, dim=adapter.projection_dim, bits=self.config.bits, clip=adapter.clip
        )

    def checkpoint(self, name: str) -> Path:
        return self.config.out / "checkpoints" / name

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start

    def train(self, name: str, params: dict[str, torch.Tensor], loss_fn, steps: int) -> None:
        c = self.config
        self.losses[name] = optimize(
            params,
            loss_fn,
            steps=steps,
            lr=c.lr,
            seed=c.seed,
            desc=name,
            checkpoint=self.checkpoint(name),
            resume=c.resume,
        )


def _head(params: dict[str, torch.Tensor]) -> LinearHead:
    return LinearHead(params["head_weight"], params["head_bias"])


def _new_head(labels: int, hidden: int) -> dict[str, torch.Tensor]:
    return {"head_weight": torch.zeros(labels, hidden), "head_bias": torch.zeros(labels)}


def projection_stage(bench: ClassifyBench) -> Adapter:
    """W_p, W_d, soft prompt and head together, at the noise of `projection_mu`."""
    c, path = bench.config, bench.path
    pca = pca_adapter(path.table, dim=c.dim)
    # W_p scaled so that the clip is 1 (the same 98 % of |Z| inside it as PCA's rule).
    params = {
        "down": pca.down / pca.clip,
        "up": pca.up * pca.clip,
        "soft_prompt": path.table[[path.cls_id] * c.soft_prompt_length].clone(),
        **_new_head(len(bench.data.label_names), pca.hidden_size),
    }

    def working() -> Adapter:
        return replace(pca, down=params["down"], up=params["up"], clip=1.0)

    spec = PrivacySpec.from_mu(mu=c.projection_mu, dim=c.dim, bits=c.bits, clip=1.0)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        ids, labels = bench.data.train.batch(c.batch, generator)
        logits = path.logits(
            working(),
            ids,
            _head(params),
            spec=spec,
            generator=generator,
            soft_prompt=params["soft_prompt"],
        )
        return F.cross_entropy(logits, labels)

    with bench.timed("projection_s"):
        bench.train("projection", params, loss_fn, c.projection_steps)
    detached = {name: t.detach().clone() for name, t in params.items()}
    task = ClassificationTask(
        name=Path(c.data).name,
        labels=bench.data.label_names,
        heads={c.projection_mu: _head(detached)},
    )
    return replace(
        pca,
        down=detached["down"],
        up=detached["up"],
        clip=1.0,
        soft_prompts={c.projection_mu: detached["soft_prompt"]},
        task=task,
        metadata={
            **pca.metadata,
            "projection": "pca + trained for the task with noise in the loop",
            "projection_mu": c.projection_mu,
            "projection_steps": c.projection_steps,
            "clip_rule": "1: W_p starts as PCA scaled to put 98 % of |Z| inside, then trained",
            "model_id": bench.loaded.model_id,
            "bits": c.bits,
        },
    )


def attacker(bench: ClassifyBench) -> Attacker:
    """The server as attacker: no causal LM (no beam attack), the training text as language."""
    options = AttackOptions(learned_steps=bench.config.inversion_steps)
    return Attacker(bench.path.table.float(), None, None, bench.data.train.stream(), options)


def calibration_stage(bench: ClassifyBench, adapter: Adapter) -> Adapter:
    c = bench.config
    prompts = bench.data.held_out.windows(c.calibration_prompts, c.calibration_length)
    with bench.timed("calibration_s"):
        levels = calibrate(
            adapter,
            attacker(bench),
            prompts,
            measured_on=f"{Path(c.data).name}, held-out training sentences",
            targets=c.targets,
            bits=c.bits,
            seed=c.seed,
        )
    return replace(adapter, calibration=[level.to_dict() for level in levels])


def level_stage(bench: ClassifyBench, adapter: Adapter) -> Adapter:
    """Per calibrated level: its soft prompt and head, from the projection stage's, fine-tuned
    at the level's noise (the projection frozen: the client's table is one for all levels)."""
    c = bench.config
    start_mu = c.projection_mu
    heads, prompts = dict(adapter.task.heads), dict(adapter.soft_prompts)
    with bench.timed("levels_s"):
        for level in adapter.calibration:
            mu = level["mu"]
            start = adapter.task.heads[start_mu]
            params = {
                "soft_prompt": adapter.soft_prompts[start_mu].clone(),
                "head_weight": start.weight.clone(),
                "head_bias": start.bias.clone(),
            }
            spec = bench.spec(adapter, mu)

            def loss_fn(generator: torch.Generator, params=params, spec=spec) -> torch.Tensor:
                ids, labels = bench.data.train.batch(c.batch, generator)
                logits = bench.path.logits(
                    adapter,
                    ids,
                    _head(params),
                    spec=spec,
                    generator=generator,
                    soft_prompt=params["soft_prompt"],
                )
                return F.cross_entropy(logits, labels)

            bench.train(f"level_mu{mu:.6g}", params, loss_fn, c.level_steps)
            heads[mu] = _head({k: v.detach().clone() for k, v in params.items()})
            prompts[mu] = params["soft_prompt"].detach().clone()
    keep = {level["mu"] for level in adapter.calibration}  # the projection's own is not served
    task = replace(adapter.task, heads={mu: h for mu, h in heads.items() if mu in keep})
    kept_prompts = {mu: p for mu, p in prompts.items() if mu in keep}
    return replace(adapter, soft_prompts=kept_prompts, task=task)


def clean_head_stage(bench: ClassifyBench, adapter: Adapter) -> Adapter:
    """A head for raw embeddings (the raw mechanism, no privacy)."""
    c = bench.config
    params = _new_head(len(bench.data.label_names), adapter.hidden_size)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        ids, labels = bench.data.train.batch(c.batch, generator)
        return F.cross_entropy(bench.path.raw_logits(adapter, ids, _head(params)), labels)

    with bench.timed("clean_head_s"):
        bench.train("clean_head", params, loss_fn, c.level_steps)
    task = replace(adapter.task, clean_head=_head(params))
    return replace(adapter, task=task)


def accuracy(bench: ClassifyBench, adapter: Adapter, mu: float | None, seed: int) -> float:
    """Dev accuracy at level `mu` (one noise draw from `seed`), or on raw embeddings (None)."""
    dev, generator = bench.data.dev, torch.Generator().manual_seed(seed)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(dev), EVAL_BATCH):
            ids = list(dev.ids[start : start + EVAL_BATCH])
            if mu is None:
                logits = bench.path.raw_logits(adapter, ids, adapter.task.clean_head)
            else:
                logits = bench.path.logits(
                    adapter,
                    ids,
                    adapter.task.heads[mu],
                    spec=bench.spec(adapter, mu),
                    generator=generator,
                    soft_prompt=adapter.soft_prompts.get(mu),
                )
            correct += int((logits.argmax(-1) == dev.labels[start : start + EVAL_BATCH]).sum())
    return correct / len(dev)


def evaluation(bench: ClassifyBench, adapter: Adapter) -> dict:
    c, dev = bench.config, bench.data.dev
    with bench.timed("evaluation_s"):
        levels = []
        for level in adapter.calibration:
            runs = [accuracy(bench, adapter, level["mu"], seed) for seed in c.eval_seeds]
            levels.append(
                {
                    "target_attack_rate": level["target_attack_rate"],
                    "mu": level["mu"],
                    "accuracy": float(np.mean(runs)),
                    "accuracy_runs": runs,
                    "strongest_attack": level["strongest_attack"],
                    "strongest_rate_high": level["attacks"][level["strongest_attack"]]["high"],
                }
            )
        majority = float(torch.bincount(dev.labels).max()) / len(dev)
        clean = accuracy(bench, adapter, None, 0)
    return {"dev_sentences": len(dev), "majority": majority, "clean": clean, "levels": levels}


def write_report(bench: ClassifyBench, adapter: Adapter, evaluated: dict) -> dict:
    from .report import write_markdown

    c = bench.config
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(c).items()},
        "model_id": bench.loaded.model_id,
        "data": {"source": c.data, **bench.data.describe()},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "timings": bench.timings,
        "losses": {name: loss_summary(values) for name, values in bench.losses.items()},
        "levels": adapter.calibration,
        "evaluation": evaluated,
    }
    (c.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(c.out / "TRAINING.md", report)
    return report


def run_all(config: ClassifyConfig) -> Adapter:
    started = time.perf_counter()
    bench = ClassifyBench.open(config)
    adapter = projection_stage(bench)
    adapter = calibration_stage(bench, adapter)
    adapter = level_stage(bench, adapter)
    adapter = clean_head_stage(bench, adapter)
    adapter.save(config.out)
    evaluated = evaluation(bench, adapter)
    bench.timings["total_s"] = time.perf_counter() - started
    write_report(bench, adapter, evaluated)
    return adapter
