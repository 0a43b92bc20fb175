"""The stages in order for one model, each also runnable on its own from the CLI.

    projection   -> out/adapter.*                (W_p, W_d, clip; no levels yet)
    calibrate    -> adds the calibration table   (μ per target attack rate)
    soft prompts -> adds one soft prompt a level
    evaluation   -> adds each level's utility    (held-out loss as served, against a soft
                                                  prompt trained with nothing sent) and, to a
                                                  posterior adapter, the particle reader
    report       -> out/training.json, out/TRAINING.md, out/training_losses.png

`run_all` writes an adapter that `del-server serve --adapter out` loads; `refresh_evaluation`
runs the evaluation alone on an adapter already in out, `recalibrate` every stage but the
projection. Checkpoints go to out/checkpoints;
`resume=True` picks every stage up where it stopped.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from del_client.mechanism import PrivacySpec
from del_client.parameters import DEFAULT_BITS

from ..adapter import Adapter, ParticleReading, check_projection_dim, pca_adapter
from ..attacks.mechanisms import Binomial
from ..attacks.suite import Attacker, AttackOptions
from ..errors import InputError
from ..front_end import front_end_of, initial_parameters
from ..levels import adapter_levels
from ..models import LoadedModel, load_model
from ..paths import recorded, shown
from .calibrate import DEFAULT_TARGETS, calibrate
from .data import Split, Windows, load_split
from .defaults import (
    DEFAULT_PARTICLES,
    DEFAULT_PREFIX_STEPS,
    DEFAULT_READER_PARTICLES,
    DEFAULT_TRIGRAM_KEEP,
    MU_RANGE,
)
from .evaluate import level_losses, loss_utility, reference_losses
from .loop import checkpoint_in, loss_summary
from .objective import FrozenLM
from .projection import train_projection
from .reader import ReaderBench, paired_margin, selection_windows
from .report import plot_losses, write_markdown
from .soft_prompt import PromptFn, level_prompt, levels_training, nothing_sent, train_soft_prompt


@dataclass(frozen=True)
class TrainConfig:
    model: str
    data: str
    out: Path
    dim: int = 16
    bits: int = DEFAULT_BITS
    projection_steps: int = 800
    projection_noise_mu: float | None = None  # noise-aware projection training at this μ
    soft_prompt_length: int = 8
    soft_prompt_steps: int = 600
    soft_prompt_mus: tuple[float, ...] = ()  # empty: the calibrated levels
    # "linear" or "posterior" (front_end.py), trained with the soft prompts; None: as the
    # adapter has it (linear for a new one)
    front_end: str | None = None
    batch: int = 32
    targets: tuple[float, ...] = DEFAULT_TARGETS
    max_mu: float | tuple[float, ...] = MU_RANGE[1]  # no level's μ above it (calibrate.mu_caps)
    # recalibrate: only the levels of `targets` are new; the others keep their μ, record,
    # soft prompt and front-end
    keep_other_levels: bool = False
    calibration_prompts: int = 250  # held-out prompts every attack is measured on
    inversion_steps: int = 400  # training of the learned attack, per verification
    beam_width: int = 64  # the LLM beam attack
    particles: int = DEFAULT_PARTICLES  # the LLM particle attacks
    trigram_keep: int = DEFAULT_TRIGRAM_KEEP  # the trigram attack's candidates per position
    reader_particles: int = DEFAULT_READER_PARTICLES  # the served particle reader; 0: none
    jobs: int = 1  # reader measurements at once, each in a process of one torch thread
    prefix_steps: int = DEFAULT_PREFIX_STEPS  # their mid-text prefix's training
    eval_windows: int = 256
    eval_seeds: tuple[int, ...] = (0, 1, 2)
    seed: int = 0
    resume: bool = False
    command: str = ""  # the command line that produced this run, for the report


@dataclass
class Workbench:
    """What every stage needs, loaded once: the model, the frozen LM, the data split."""

    config: TrainConfig
    loaded: LoadedModel
    lm: FrozenLM
    split: Split
    timings: dict[str, float] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def open(cls, config: TrainConfig) -> Workbench:
        torch.manual_seed(config.seed)
        loaded = load_model(config.model)
        if torch.cuda.is_available():
            loaded.model.to("cuda")
        return cls(
            config,
            loaded,
            FrozenLM(loaded.model, loaded.bos_id),
            load_split(config.data, loaded.tokenizer),
        )

    @property
    def attack_options(self) -> AttackOptions:
        c = self.config
        return AttackOptions(
            beam_width=c.beam_width,
            learned_steps=c.inversion_steps,
            particles=c.particles,
            trigram_keep=c.trigram_keep,
            prefix_steps=c.prefix_steps,
        )

    def attacker(self) -> Attacker:
        return Attacker.of_model(
            self.loaded.model, self.loaded.bos_id, self.split.train, self.attack_options
        )

    def checkpoint(self, name: str) -> Path:
        return checkpoint_in(self.config.out, name)

    def check_held_out_text(self, adapter: Adapter | None) -> None:
        """Refuse held-out text too short for the calibration prompts or for the particle
        reader of `adapter` (None: a new one) as a run opens, not after stages have trained."""
        self.calibration_prompts()
        self.reader_selection(self.leaves_posterior(adapter))

    def calibration_prompts(self) -> np.ndarray:
        """(N, prompt_tokens) the held-out prompts every level is calibrated on."""
        return self.split.validation.first(
            self.config.calibration_prompts,
            asked_by="--calibration-prompts",
            remedy="use more text (--data) or ask for fewer",
        ).prompts.numpy()

    def leaves_posterior(self, adapter: Adapter | None) -> bool:
        """Whether the soft-prompt stage leaves `adapter` (None: a new one) with a posterior
        front-end: config.front_end, or as the adapter has it."""
        if self.config.front_end is not None:
            return self.config.front_end == "posterior"
        return adapter is not None and adapter.prior is not None

    def reader_selection(self, posterior: bool) -> Windows | None:
        """The held-out windows the particle reader's λ is fitted on, where the evaluation
        serves one (a `posterior` front-end, reader_particles > 0); None where it does not."""
        c = self.config
        if not posterior or c.reader_particles == 0:
            return None
        return selection_windows(
            self.split.validation,
            c.eval_windows,
            remedy="use more text (--data), or serve no reader (--reader-particles 0)",
        )

    def spec(self, adapter: Adapter, mu: float) -> PrivacySpec:
        return PrivacySpec.from_mu(
            mu=mu, dim=adapter.projection_dim, bits=self.config.bits, clip=adapter.clip
        )

    def soft_prompt(
        self,
        name: str,
        prompt_fn: PromptFn,
        *,
        desc: str,
        length: int,
        steps: int,
        path_parameters: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """A soft prompt trained for `prompt_fn` (and its `path_parameters`, in place); its
        losses and checkpoint go under `name`."""
        c = self.config
        prompt, self.losses[name] = train_soft_prompt(
            prompt_fn,
            self.lm,
            self.split.train,
            self.loaded.tokenizer,
            desc=desc,
            length=length,
            steps=steps,
            batch=c.batch,
            seed=c.seed,
            checkpoint=self.checkpoint(name),
            resume=c.resume,
            path_parameters=path_parameters,
        )
        return prompt

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start


def projection_stage(bench: Workbench) -> Adapter:
    c = bench.config
    check_projection_dim(c.dim, bench.lm.table.shape[1])
    noise = None
    if c.projection_noise_mu is not None:  # the clip of PCA, since the trained one is not known yet
        start_clip = pca_adapter(bench.lm.table, dim=c.dim).clip
        noise = PrivacySpec.from_mu(
            mu=c.projection_noise_mu, dim=c.dim, bits=c.bits, clip=start_clip
        )
    with bench.timed("projection_s"):
        adapter, bench.losses["projection"] = train_projection(
            bench.lm,
            bench.split.train,
            dim=c.dim,
            steps=c.projection_steps,
            batch=c.batch,
            seed=c.seed,
            noise=noise,
            checkpoint=bench.checkpoint("projection"),
            resume=c.resume,
        )
    metadata = {**adapter.metadata, "model_id": bench.loaded.model_id, "bits": c.bits}
    return replace(adapter, metadata=metadata)


def calibration_stage(bench: Workbench, adapter: Adapter) -> Adapter:
    c = bench.config
    prompts = bench.calibration_prompts()
    with bench.timed("calibration_s"):
        levels = calibrate(
            adapter,
            bench.attacker(),
            prompts,
            measured_on=f"{Path(c.data).name}, held-out prompts; {bench.attack_options.strength()}",
            targets=c.targets,
            bits=c.bits,
            seed=c.seed,
            max_mu=c.max_mu,
        )
    # The reader's λ were fitted for the old levels: the evaluation stage fits them anew.
    return replace(adapter, calibration=tuple(levels), reader=None)


def soft_prompt_stage(bench: Workbench, adapter: Adapter) -> Adapter:
    c = bench.config
    mus = c.soft_prompt_mus or tuple(level.mu for level in adapter.calibration)
    if not mus:
        raise InputError("no privacy levels: calibrate first or pass --mu")
    # Switching front-ends drops the soft prompts trained for the other one (and the reader).
    if c.front_end == "posterior" and adapter.prior is None:
        prior = bench.attacker().prior  # the attacker's, exactly
        adapter = replace(adapter, prior=prior, soft_prompts={}, front_ends={}, reader=None)
    elif c.front_end == "linear" and adapter.prior is not None:
        adapter = replace(adapter, prior=None, soft_prompts={}, front_ends={}, reader=None)
    front_end = front_end_of(adapter, bench.lm.table)
    prompts, front_ends = dict(adapter.soft_prompts), dict(adapter.front_ends)
    with bench.timed("soft_prompts_s"):
        for mu in mus:
            spec = bench.spec(adapter, mu)
            parameters = initial_parameters(bench.lm.table) if front_end else None
            prompts[mu] = bench.soft_prompt(
                f"soft_prompt_mu{mu:g}",
                level_prompt(bench.lm, adapter, spec, front_end, parameters),
                desc=f"soft prompt mu={spec.mu():.3g}",
                length=c.soft_prompt_length,
                steps=c.soft_prompt_steps,
                path_parameters=parameters,
            )
            if parameters is not None:
                front_ends[mu] = {k: v.detach().clone() for k, v in parameters.items()}
    metadata = {
        **adapter.metadata,
        "soft_prompt_length": c.soft_prompt_length,
        "soft_prompt_steps": c.soft_prompt_steps,
    }
    return replace(adapter, soft_prompts=prompts, front_ends=front_ends, metadata=metadata)


def evaluation(bench: Workbench, adapter: Adapter) -> tuple[Adapter, dict]:
    """Held-out losses of every level as the server serves it, beside sending nothing with a
    soft prompt trained for that case exactly as the levels' were; -> the adapter whose
    calibrated levels carry their utility record, and the figures for the report.

    A posterior adapter (and reader_particles > 0) gains the particle reader, with the
    nothing-sent soft prompt as its prefix and each level's λ fitted (train/reader.py), and
    is then served through it: its levels' utility is the reader's loss, and the nothing-sent
    reference the better of the soft prompt alone and the reader with no symbols. Otherwise
    a level is served with its noise, front-end and soft prompt."""
    c = bench.config
    validation = bench.split.validation.head(c.eval_windows)
    selection = bench.reader_selection(adapter.prior is not None)
    training = levels_training(adapter)
    with bench.timed("nothing_sent_soft_prompt_s"):
        nothing = bench.soft_prompt(
            "nothing_sent", nothing_sent, desc="soft prompt, nothing sent", **training
        )
    front_end = front_end_of(adapter, bench.lm.table)
    reader = None
    if selection is not None:
        reader = ReaderBench(
            bench.lm, front_end, nothing, c.reader_particles, c.seed, selection, validation
        )
    with bench.timed("evaluation_s"):
        references = reference_losses(bench.lm, adapter, validation, nothing)
        baseline = references["nothing_sent_soft_prompt"]
        levels = adapter_levels(adapter)
        if reader is not None:
            # The slow part: every level and the blind reader, c.jobs at a time.
            blind, *reads = reader.measure_each(
                [None, *(Binomial(level.spec) for level in levels)], jobs=c.jobs
            )
            references["nothing_sent_reader"] = blind.to_dict()
            # Per window, the better way of sending nothing: what a level's margin pairs with.
            unsent = reader.prefix_alone
            if blind.loss <= baseline:
                baseline, unsent = blind.loss, blind.served
        served, calibration = [], []
        for index, level in enumerate(levels):
            soft = adapter.soft_prompts[level.mu] if level.soft_prompt else None
            path = level_prompt(
                bench.lm, adapter, level.spec, front_end, adapter.front_ends.get(level.mu)
            )
            losses = level_losses(bench.lm, path, validation, soft, c.eval_seeds)
            loss = losses["noisy_soft_prompt"]["mean"]
            measured_on, margin = _measured_on(bench, validation), 0.0
            if reader is not None:
                read = reads[index]
                losses["reader"] = read.to_dict()
                loss, measured_on = read.loss, _measured_on(bench, validation, reader)
                margin = losses["reader"]["margin"] = paired_margin(read.served, unsent, validation)
            utility = loss_utility(loss, baseline, measured_on, margin)
            served.append(
                {
                    "id": level.id,
                    "mu": level.mu,
                    "soft_prompt": level.soft_prompt,
                    **losses,
                    "served": loss,
                    "informative": loss < references["no_prompt"],
                    "better_than_nothing": utility.better_than_nothing,
                }
            )
            if level.calibration is not None:
                calibration.append(level.calibration.with_utility(utility))
    evaluated = {
        "windows": len(validation),
        "seeds": list(c.eval_seeds),
        **references,
        "nothing_sent": baseline,
        "nothing_sent_training": {**training, "batch": c.batch, "seed": c.seed},
        "reader": _reader_setup(reader),
        "levels": served,
    }
    reading = None
    if reader is not None:
        ignore = {level["mu"]: level["reader"]["ignore_prompt"] for level in served}
        reading = ParticleReading(nothing.detach().clone(), reader.particles, ignore)
    return replace(adapter, calibration=calibration, reader=reading), evaluated


def _reader_setup(reader: ReaderBench | None) -> dict | None:
    if reader is None:
        return None
    return {
        "particles": reader.particles,
        "seed": reader.seed,
        "selection_windows": len(reader.selection),
    }


def _measured_on(bench: Workbench, windows: Windows, reader: ReaderBench | None = None) -> str:
    noise = (
        f"one noise draw per window (seed {bench.config.seed + 1}), through the particle "
        f"reader ({reader.particles} particles, its λ fitted on {len(reader.selection)} other "
        "held-out windows)"
        if reader
        else f"mean over noise seeds {', '.join(map(str, bench.config.eval_seeds))}"
    )
    return (
        f"{len(windows)} held-out windows of {Path(bench.config.data).name} "
        f"({windows.prompts.shape[1]} prompt + {windows.continuations.shape[1]} continuation "
        f"tokens), {noise}"
    )


def write_report(bench: Workbench, adapter: Adapter, evaluated: dict) -> dict:
    c = bench.config
    report = {
        "config": recorded(c),
        "model_id": bench.loaded.model_id,
        "data": {"source": shown(c.data), **bench.split.describe()},
        "machine": _machine(bench),
        "clip": adapter.clip,
        "clip_rule": adapter.metadata["clip_rule"],
        "timings": bench.timings,
        "losses": _loss_summaries(bench),
        "levels": [level.to_dict() for level in adapter.calibration],
        "evaluation": evaluated,
    }
    plot_losses(
        c.out / "training_losses.png",
        bench.losses.get("projection", []),
        _soft_prompt_losses(bench),
    )
    _write_trained_report(c, report)
    return report


def _soft_prompt_losses(bench: Workbench) -> dict[float, list[float]]:
    """μ -> the per-step losses of that level's soft prompt, as trained in this run."""
    return {
        float(k.removeprefix("soft_prompt_mu")): v
        for k, v in bench.losses.items()
        if k.startswith("soft_prompt_mu")
    }


def _machine(bench: Workbench) -> dict:
    return {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(bench.lm.device),
    }


def _loss_summaries(bench: Workbench) -> dict:
    return {name: loss_summary(values) for name, values in bench.losses.items()}


def run_all(config: TrainConfig) -> Adapter:
    started = time.perf_counter()
    bench = Workbench.open(config)
    bench.check_held_out_text(None)
    adapter = projection_stage(bench)
    adapter = calibration_stage(bench, adapter)
    adapter = soft_prompt_stage(bench, adapter)
    adapter, evaluated = evaluation(bench, adapter)
    adapter.save(config.out)
    bench.timings["total_s"] = time.perf_counter() - started
    write_report(bench, adapter, evaluated)
    return adapter


def refresh_evaluation(config: TrainConfig) -> Adapter:
    """The evaluation stage alone on the adapter in config.out, trained earlier: its levels
    gain (or renew) their utility records, its training.json and TRAINING.md the new figures;
    nothing else is retrained (projection, levels and soft prompts stay as they are)."""
    report = _trained_report(config)
    bench = Workbench.open(config)
    adapter, evaluated = evaluation(bench, Adapter.load(config.out))
    adapter.save(config.out)
    report.update(
        levels=[level.to_dict() for level in adapter.calibration],
        evaluation=evaluated,
        timings={**report["timings"], **bench.timings},
        losses={**report["losses"], **_loss_summaries(bench)},
        evaluated_by={"command": config.command, "machine": _machine(bench)},
    )
    _write_trained_report(config, report)
    return adapter


def recalibrate(config: TrainConfig) -> Adapter:
    """New levels for the adapter in config.out with its projection (and prior) kept: the
    calibration against today's attack suite, a soft prompt and front-end per new level, the
    evaluation and the report. What a provider runs when the suite has grown stronger than the
    one the levels were calibrated against; the old levels (with `keep_other_levels`, those of
    `targets` only), their soft prompts and the reader go, and the projection's training
    record stays in the report."""
    report = _trained_report(config)
    started = time.perf_counter()
    bench = Workbench.open(config)
    trained = Adapter.load(config.out)
    bench.check_held_out_text(trained)
    kept = tuple(
        level
        for level in trained.calibration
        if config.keep_other_levels and level.target_attack_rate not in config.targets
    )
    mus = {level.mu for level in kept}
    adapter = replace(
        trained,
        calibration=(),
        soft_prompts={mu: p for mu, p in trained.soft_prompts.items() if mu in mus},
        front_ends={mu: f for mu, f in trained.front_ends.items() if mu in mus},
        reader=None,
    )
    new = calibration_stage(bench, adapter).calibration
    adapter = replace(
        adapter,
        calibration=tuple(sorted((*kept, *new), key=lambda level: level.target_attack_rate)),
    )
    only_new = replace(config, soft_prompt_mus=tuple(level.mu for level in new))
    adapter = soft_prompt_stage(replace(bench, config=only_new), adapter)
    adapter, evaluated = evaluation(bench, adapter)
    adapter.save(config.out)
    bench.timings["total_s"] = time.perf_counter() - started
    kept = ("command", "dim", "projection_steps", "projection_noise_mu")
    projection = report["losses"].get("projection")
    report.update(
        config={**recorded(config), **{k: report["config"][k] for k in kept}},
        levels=[level.to_dict() for level in adapter.calibration],
        evaluation=evaluated,
        timings={"projection_s": report["timings"].get("projection_s"), **bench.timings},
        losses={**({"projection": projection} if projection else {}), **_loss_summaries(bench)},
        machine=_machine(bench),
        recalibrated_by={"command": config.command},
    )
    report.pop("evaluated_by", None)
    plot_losses(config.out / "training_losses.png", [], _soft_prompt_losses(bench))
    _write_trained_report(config, report)
    return adapter


def _trained_report(config: TrainConfig) -> dict:
    path = config.out / "training.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training report to refresh (`del-server train all`)")
    return json.loads(path.read_text())


def _write_trained_report(config: TrainConfig, report: dict) -> None:
    (config.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(config.out / "TRAINING.md", report)
