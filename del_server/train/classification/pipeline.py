"""`del-server train classify`: every stage for one encoder and one task, in order.

    projection   W_p and a head over the decoded symbols' moments, trained together with the
                 mechanism's noise at `projection_mu` in the loop (no encoder pass: fast
                 enough for three passes over SST-2's training set); the clip fixed at 1
                 (W_p's scale is what training moves), so what was trained is what is served
    front-end    W_d, a soft prompt and the head, through the frozen encoder at the same noise
                 (the head's encoder inputs start at zero: it starts from the moments alone)
    calibrate    μ per target attack rate (at most `max_mu`), against every attack that runs
                 without a causal LM (a WordPiece bigram prior from the training sentences)
    levels       per level, its soft prompt and head fine-tuned at its own noise
    clean head   a head for raw (unprivatized) embeddings: the no-privacy mechanism
    report       dev accuracy per level (several noise draws), training.json, TRAINING.md

Every stage ends on the parameters with the lowest loss on training sentences held out for
model selection (never dev: dev is what the report measures).

A few coordinates and bits per token keep a token's identity hidden (the attacks recover
little more than the most frequent words) while a sentence's label survives in the aggregate;
training the projection for the task puts polarity into those coordinates. The result is an
adapter with a task: `del-server serve --model M --adapter out` serves Classify.
Checkpoints go to out/checkpoints; `resume=True` picks every stage up.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from del_client.mechanism import PrivacySpec

from ...adapter import HEAD_TENSORS, Adapter, ClassificationTask, Head, pca_adapter
from ...attacks.suite import Attacker, AttackOptions
from ...calibration import MeasuredUtility
from ...errors import InputError
from ...models import LoadedModel, load_model
from ...paths import recorded, shown
from ..calibrate import calibrate
from ..defaults import DEFAULT_TRIGRAM_KEEP
from ..labelled import LabelledData, load_labelled
from ..loop import HeldOut, checkpoint_in, loss_summary, optimize
from .objective import Noise, NoisyPath, binomial_noise

EVAL_BATCH = 64


@dataclass(frozen=True)
class ClassifyConfig:
    model: str
    data: str
    out: Path
    # k = 2, b = 2 (4 bits a token), the projection trained at μ = 64: the frontier's best
    # shape under 10 % once the trigram attacks (docs/eval-nlu/frontier); b = 3 at μ = 16
    # gave 0.5 points less at a 2-point higher attack bound.
    dim: int = 2
    bits: int = 2
    projection_mu: float = 64.0
    projection_steps: int = 3000  # 300 left it 3 points short (SST-2 dev: 73.7 % -> 76.4 %)
    projection_batch: int = 64
    projection_lr: float = 3e-3
    front_end_steps: int = 200
    level_steps: int = 400
    soft_prompt_length: int = 4
    head_hidden: int = 64
    batch: int = 32
    lr: float = 3e-3
    # Training sentences held out for model selection: every stage ends on the parameters with
    # the lowest held-out loss, checked every `check_every` steps (labelled.py: how they are
    # held out). The encoder stages lost 2 points of dev accuracy when run to their last step.
    held_out: int = 500
    check_every: int = 50
    # Knowing SST-2's language alone, the trigram recovers 5.4 % of a dev sentence's tokens
    # (95 % up to 6.1 %): a 5 % level cannot hold on the text a user sends.
    targets: tuple[float, ...] = (0.075, 0.10)
    # One cap per target, or one for all: beyond 64 the symbols are all but deterministic (ε
    # grows, accuracy not).
    max_mu: float | tuple[float, ...] = 64.0
    calibration_prompts: int = 250
    trigram_keep: int = DEFAULT_TRIGRAM_KEEP  # the trigram attack's candidates per position
    calibration_length: int = 16  # tokens per calibration window
    inversion_steps: int = 150  # the learned attack: bigram forward-backward beats it here
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
    selection: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def open(cls, config: ClassifyConfig) -> ClassifyBench:
        torch.manual_seed(config.seed)
        loaded = load_model(config.model)
        if not loaded.is_encoder:
            raise InputError(
                f"--model {config.model} is a causal LM: classification trains an encoder"
            )
        path = NoisyPath(loaded.model, cls_id=loaded.cls_id, sep_id=loaded.sep_id)
        data = load_labelled(
            config.data, loaded.tokenizer, held_out=config.held_out, seed=config.seed
        )
        return cls(config, loaded, path, data)

    def spec(self, adapter: Adapter, mu: float) -> PrivacySpec:
        return PrivacySpec.from_mu(
            mu=mu, dim=adapter.projection_dim, bits=self.config.bits, clip=adapter.clip
        )

    def checkpoint(self, name: str) -> Path:
        return checkpoint_in(self.config.out, name)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start


def _head(params: dict[str, torch.Tensor]) -> Head:
    return Head(*(params[f"head.{part}"] for part in HEAD_TENSORS))


def _head_params(head: Head) -> dict[str, torch.Tensor]:
    return {f"head.{part}": getattr(head, part).clone() for part in HEAD_TENSORS}


def _new_head(bench: ClassifyBench, adapter: Adapter, *, encoder: bool) -> Head:
    """A head reading the symbols' moments (and, with `encoder`, the encoder's pooled output).

    Without `encoder` its encoder inputs start at zero: it begins from the moments alone, and
    a later stage grows the encoder's part from there. With it (the clean head, whose inputs
    have no moments) the output layer starts random too: a zero output layer after inputs
    that are all zero would leave the hidden layer without a gradient."""
    c, d, k = bench.config, adapter.hidden_size, adapter.projection_dim
    generator = torch.Generator().manual_seed(c.seed)
    hidden = torch.randn(c.head_hidden, d + 2 * k, generator=generator) / math.sqrt(d + 2 * k)
    hidden[:, d:] = torch.randn(c.head_hidden, 2 * k, generator=generator) / math.sqrt(2 * k)
    if not encoder:
        hidden[:, :d] = 0
    labels = len(bench.data.label_names)
    output = torch.zeros(labels, c.head_hidden)
    if encoder:  # its moments are zero for raw inputs: the hidden layer needs a gradient path
        output = torch.randn(labels, c.head_hidden, generator=generator) / math.sqrt(c.head_hidden)
    return Head(hidden, torch.zeros(c.head_hidden), output, torch.zeros(labels))


Logits = Callable[[list[torch.Tensor], torch.Generator], torch.Tensor]


def _noisy_logits(
    bench: ClassifyBench, adapter_of, params, noise: Noise, *, encoder: bool = True
) -> Logits:
    """The served path with the stage's current parameters: fresh noise from the generator."""

    def logits(ids: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        return bench.path.logits(
            adapter_of(),
            ids,
            _head(params),
            noise=noise,
            generator=generator,
            soft_prompt=params.get("soft_prompt"),
            encoder=encoder,
        )

    return logits


def _train_on(
    bench: ClassifyBench,
    logits: Logits,
    name: str,
    params: dict[str, torch.Tensor],
    steps: int,
    *,
    batch: int | None = None,
    lr: float | None = None,
) -> None:
    """Stage `name`: cross-entropy of `logits` on fresh training batches (of `batch` rows, else
    the config's), ending on the parameters of the lowest loss on the held-out sentences under
    one fixed noise draw (the same draw at every check: the checks compare parameters)."""
    size = batch or bench.config.batch
    held_out = bench.data.held_out

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        ids, labels = bench.data.train.batch(size, generator)
        return F.cross_entropy(logits(ids, generator), labels)

    def held_out_loss() -> float:
        generator, total = torch.Generator().manual_seed(bench.config.seed), 0.0
        for start in range(0, len(held_out), EVAL_BATCH):
            ids = list(held_out.ids[start : start + EVAL_BATCH])
            labels = held_out.labels[start : start + EVAL_BATCH]
            total += float(F.cross_entropy(logits(ids, generator), labels, reduction="sum"))
        return total / len(held_out)

    c = bench.config
    checks = HeldOut(held_out_loss, every=c.check_every)
    bench.losses[name] = optimize(
        params,
        loss_fn,
        steps=steps,
        lr=lr or c.lr,
        seed=c.seed,
        desc=name,
        checkpoint=bench.checkpoint(name),
        resume=c.resume,
        held_out=checks,
    )
    bench.selection[name] = checks.summary()


def projection_stage(bench: ClassifyBench) -> Adapter:
    """W_p and the head on the symbols' moments, at the noise of `projection_mu`."""
    c, path = bench.config, bench.path
    pca = pca_adapter(path.table, dim=c.dim)
    # W_p scaled so that the clip is 1 (the same 98 % of |Z| inside it as PCA's rule); W_d its
    # pseudo-inverse until the front-end stage trains it.
    start = replace(pca, down=pca.down / pca.clip, up=pca.up * pca.clip, clip=1.0)
    params = {"down": start.down.clone(), **_head_params(_new_head(bench, start, encoder=False))}
    spec = PrivacySpec.from_mu(mu=c.projection_mu, dim=c.dim, bits=c.bits, clip=1.0)

    def working() -> Adapter:
        return replace(start, down=params["down"])

    logits = _noisy_logits(bench, working, params, binomial_noise(spec), encoder=False)
    with bench.timed("projection_s"):
        _train_on(
            bench,
            logits,
            "projection",
            params,
            c.projection_steps,
            batch=c.projection_batch,
            lr=c.projection_lr,
        )
    down = params["down"].detach().clone()
    task = ClassificationTask(
        name=Path(c.data).name,
        labels=bench.data.label_names,
        heads={c.projection_mu: _head({k: v.detach() for k, v in params.items()})},
    )
    return replace(
        start,
        down=down,
        up=torch.linalg.pinv(down),
        task=task,
        metadata={
            **pca.metadata,
            "projection": "pca, then trained for the task with noise in the loop",
            "projection_mu": c.projection_mu,
            "projection_steps": c.projection_steps,
            "clip_rule": "1: W_p starts as PCA scaled to put 98 % of |Z| inside, then trained",
            "model_id": bench.loaded.model_id,
            "bits": c.bits,
        },
    )


def front_end_stage(bench: ClassifyBench, adapter: Adapter) -> Adapter:
    """W_d, a soft prompt and the head through the frozen encoder, at `projection_mu`."""
    c, path = bench.config, bench.path
    params = {
        "up": adapter.up.clone(),
        "soft_prompt": path.table[[path.cls_id] * c.soft_prompt_length].clone(),
        **_head_params(adapter.task.heads[c.projection_mu]),
    }

    def working() -> Adapter:
        return replace(adapter, up=params["up"])

    spec = bench.spec(adapter, c.projection_mu)
    logits = _noisy_logits(bench, working, params, binomial_noise(spec))
    with bench.timed("front_end_s"):
        _train_on(bench, logits, "front_end", params, c.front_end_steps)
    trained = {key: value.detach().clone() for key, value in params.items()}
    task = replace(adapter.task, heads={c.projection_mu: _head(trained)})
    return replace(
        adapter,
        up=trained["up"],
        soft_prompts={c.projection_mu: trained["soft_prompt"]},
        task=task,
    )


def attacker(bench: ClassifyBench) -> Attacker:
    """The server as attacker: no causal LM (no beam attack), the training text as language."""
    options = AttackOptions(
        learned_steps=bench.config.inversion_steps, trigram_keep=bench.config.trigram_keep
    )
    return Attacker.of_encoder(bench.loaded.model, bench.data.language, options)


def calibration_prompts(bench: ClassifyBench, asked_by: str) -> np.ndarray:
    """(N, L) the windows of dev sentences every level is calibrated on (labelled.py says
    why those); taken as a run opens, so text too short for them is refused before anything
    trains. `asked_by`: what set N."""
    c = bench.config
    return bench.data.dev.windows(c.calibration_prompts, c.calibration_length, asked_by=asked_by)


def calibration_stage(bench: ClassifyBench, adapter: Adapter, prompts: np.ndarray) -> Adapter:
    c = bench.config
    with bench.timed("calibration_s"):
        levels = calibrate(
            adapter,
            attacker(bench),
            prompts,
            measured_on=(
                f"{Path(c.data).name}, dev sentences (tokens only); "
                f"the trigram over {c.trigram_keep} candidates"
            ),
            targets=c.targets,
            bits=c.bits,
            seed=c.seed,
            max_mu=c.max_mu,
        )
    return replace(adapter, calibration=tuple(levels))


def train_level(
    bench: ClassifyBench,
    adapter: Adapter,
    noise: Noise,
    *,
    name: str,
    head: Head,
    soft_prompt: torch.Tensor | None,
) -> tuple[Head, torch.Tensor | None]:
    """A head (and, given a starting one, a soft prompt) trained at `noise` with the projection
    frozen: what a level serves; the evaluation trains its baselines with it too."""
    params = _head_params(head)
    if soft_prompt is not None:
        params["soft_prompt"] = soft_prompt.clone()
    logits = _noisy_logits(bench, lambda: adapter, params, noise)
    _train_on(bench, logits, name, params, bench.config.level_steps)
    trained = {key: value.detach().clone() for key, value in params.items()}
    return _head(trained), trained.get("soft_prompt")


def level_stage(bench: ClassifyBench, adapter: Adapter) -> Adapter:
    """Per calibrated level: its soft prompt and head, from the front-end's, fine-tuned at the
    level's noise (the projection frozen: the client's table is one for all levels)."""
    start_mu = bench.config.projection_mu
    heads, prompts = {}, {}
    with bench.timed("levels_s"):
        for level in adapter.calibration:
            mu = level.mu
            heads[mu], prompts[mu] = train_level(
                bench,
                adapter,
                binomial_noise(bench.spec(adapter, mu)),
                name=f"level_mu{mu:.6g}",
                head=adapter.task.heads[start_mu],
                soft_prompt=adapter.soft_prompts[start_mu],
            )
    # The front-end's own head and prompt are not served: its μ is no level.
    return replace(adapter, soft_prompts=prompts, task=replace(adapter.task, heads=heads))


def clean_head_stage(bench: ClassifyBench, adapter: Adapter) -> Adapter:
    """A head for raw embeddings (the raw mechanism, no privacy): the encoder alone."""
    c = bench.config
    params = _head_params(_new_head(bench, adapter, encoder=True))

    def logits(ids: list[torch.Tensor], _generator: torch.Generator) -> torch.Tensor:
        return bench.path.raw_logits(adapter, ids, _head(params))

    with bench.timed("clean_head_s"):
        _train_on(bench, logits, "clean_head", params, c.level_steps)
    task = replace(adapter.task, clean_head=_head(params))
    return replace(adapter, task=task)


def accuracy(
    bench: ClassifyBench,
    adapter: Adapter,
    head: Head,
    noise: Noise | None,
    *,
    soft_prompt: torch.Tensor | None = None,
    seed: int = 0,
    encoder: bool = True,
) -> float:
    """Dev accuracy with `noise` (one draw from `seed`), or on raw embeddings (None); without
    `encoder`, from the symbols' moments alone (the projection stage's head)."""
    dev, generator = bench.data.dev, torch.Generator().manual_seed(seed)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(dev), EVAL_BATCH):
            ids = list(dev.ids[start : start + EVAL_BATCH])
            if noise is None:
                logits = bench.path.raw_logits(adapter, ids, head)
            else:
                logits = bench.path.logits(
                    adapter,
                    ids,
                    head,
                    noise=noise,
                    generator=generator,
                    soft_prompt=soft_prompt,
                    encoder=encoder,
                )
            correct += int((logits.argmax(-1) == dev.labels[start : start + EVAL_BATCH]).sum())
    return correct / len(dev)


def accuracies(
    bench: ClassifyBench,
    adapter: Adapter,
    head: Head,
    noise: Noise,
    soft_prompt: torch.Tensor | None = None,
    *,
    encoder: bool = True,
) -> list[float]:
    """Dev accuracy once per evaluation seed (a fresh draw of the noise each)."""
    return [
        accuracy(bench, adapter, head, noise, soft_prompt=soft_prompt, seed=seed, encoder=encoder)
        for seed in bench.config.eval_seeds
    ]


def level_accuracy(bench: ClassifyBench, adapter: Adapter, mu: float) -> list[float]:
    """Dev accuracy of a level as served: its noise, soft prompt and head."""
    noise = binomial_noise(bench.spec(adapter, mu))
    return accuracies(bench, adapter, adapter.task.heads[mu], noise, adapter.soft_prompts.get(mu))


def evaluation(bench: ClassifyBench, adapter: Adapter) -> dict:
    dev = bench.data.dev
    with bench.timed("evaluation_s"):
        levels = []
        for level in adapter.calibration:
            runs = level_accuracy(bench, adapter, level.mu)
            levels.append(
                {
                    "target_attack_rate": level.target_attack_rate,
                    "mu": level.mu,
                    "accuracy": float(np.mean(runs)),
                    "accuracy_runs": runs,
                    "strongest_attack": level.strongest_attack,
                    "strongest_rate_high": level.strongest.high,
                }
            )
        majority = dev.majority
        clean = accuracy(bench, adapter, adapter.task.clean_head, None)
    return {"dev_sentences": len(dev), "majority": majority, "clean": clean, "levels": levels}


def with_utility(bench: ClassifyBench, adapter: Adapter, evaluated: dict) -> Adapter:
    """Each level records its dev accuracy beside what sending nothing gets (the majority
    label): the manifest tells a user whether the level is worth sending the prompt at."""
    accuracy_of = {level["mu"]: level["accuracy"] for level in evaluated["levels"]}
    measured_on = f"{Path(bench.config.data).name} dev, {evaluated['dev_sentences']} sentences"
    levels = tuple(
        level.with_utility(
            MeasuredUtility(
                metric="dev accuracy",
                value=accuracy_of[level.mu],
                nothing_sent=evaluated["majority"],
                higher_is_better=True,
                measured_on=measured_on,
            )
        )
        for level in adapter.calibration
    )
    return replace(adapter, calibration=levels)


def write_report(bench: ClassifyBench, adapter: Adapter, evaluated: dict) -> dict:
    from .report import write_markdown

    c = bench.config
    report = {
        "config": recorded(c),
        "model_id": bench.loaded.model_id,
        "data": {"source": shown(c.data), **bench.data.describe()},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "timings": bench.timings,
        "losses": {name: loss_summary(values) for name, values in bench.losses.items()},
        "selection": bench.selection,
        "levels": [level.to_dict() for level in adapter.calibration],
        "evaluation": evaluated,
    }
    (c.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(c.out / "TRAINING.md", report)
    return report


def run_all(config: ClassifyConfig) -> Adapter:
    started = time.perf_counter()
    bench = ClassifyBench.open(config)
    prompts = calibration_prompts(bench, asked_by="--calibration-prompts")
    adapter = projection_stage(bench)
    adapter = front_end_stage(bench, adapter)
    adapter = calibration_stage(bench, adapter, prompts)
    adapter = level_stage(bench, adapter)
    adapter = clean_head_stage(bench, adapter)
    adapter.save(config.out)
    evaluated = evaluation(bench, adapter)
    adapter = with_utility(bench, adapter, evaluated)
    adapter.save(config.out)
    bench.timings["total_s"] = time.perf_counter() - started
    write_report(bench, adapter, evaluated)
    return adapter
