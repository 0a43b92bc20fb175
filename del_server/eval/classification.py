"""`del-server eval-nlu`: what a classification adapter's levels are worth, and what they cost.

For each calibrated level: dev accuracy (mean over noise draws) against the strongest
attack's token recovery and the exact ε; beside it the baselines, each given the same chance
(a head, and where it can take one a soft prompt, trained by the pipeline's own loop and
steps):

    majority            the most frequent label: what sending nothing gets
    clean               raw embeddings and the adapter's clean head: no privacy
    projected           the projection without noise (a head trained for it)
    del                 DEL at the level, without a soft prompt (a head trained for it)
    del + soft prompt   DEL as served: the adapter's own soft prompt and head
    gaussian (+ sp)     the Gaussian mechanism on the same projection, calibrated to the same
                        target by the same rule (train.calibrate), without and with a soft prompt

Writes OUT/eval.json, OUT/EVAL.md and OUT/accuracy_vs_attack.png.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..adapter import Adapter
from ..attacks.mechanisms import GaussianQuantized
from ..calibration import CalibratedLevel
from ..paths import shown
from ..train.calibrate import calibrate
from ..train.classification.objective import binomial_noise, clip_only, mechanism_noise
from ..train.classification.pipeline import (
    ClassifyBench,
    ClassifyConfig,
    accuracies,
    accuracy,
    attacker,
    calibration_prompts,
    level_accuracy,
    train_level,
)
from ..train.defaults import DEFAULT_TRIGRAM_KEEP
from .context import file_sha256

RAW_BITS = 16  # an fp16 embedding coordinate: what sending the prompt's embeddings costs
# Bisection steps matching the Gaussian baseline to a target: a bracket 3 % wide in μ, enough
# for a baseline (the adapter's own levels took calibrate's default).
GAUSSIAN_ITERATIONS = 8


@dataclass(frozen=True)
class NluEvalConfig:
    model: str
    adapter: Path
    data: str
    out: Path
    level_steps: int | None = None  # baselines' training steps; None: as the adapter's levels
    eval_seeds: tuple[int, ...] = (0, 1, 2)
    command: str = ""


def run(config: NluEvalConfig) -> dict:
    started = time.perf_counter()
    adapter = Adapter.load(config.adapter)
    trained = json.loads((config.adapter / "training.json").read_text())["config"]
    bench = ClassifyBench.open(
        ClassifyConfig(
            model=config.model,
            data=config.data,
            out=config.out,
            dim=adapter.projection_dim,
            bits=adapter.metadata["bits"],
            level_steps=config.level_steps or trained["level_steps"],
            held_out=trained.get("held_out", ClassifyConfig.held_out),  # older: the default
            check_every=trained.get("check_every", ClassifyConfig.check_every),
            batch=trained["batch"],
            lr=trained["lr"],
            calibration_prompts=trained["calibration_prompts"],
            calibration_length=trained["calibration_length"],
            inversion_steps=trained["inversion_steps"],
            trigram_keep=trained.get("trigram_keep", DEFAULT_TRIGRAM_KEEP),  # older: the default
            eval_seeds=config.eval_seeds,
            seed=trained["seed"],
        )
    )
    # The Gaussian baselines' calibration, on the adapter's prompts: refused before any stage.
    prompts = calibration_prompts(bench, f"--data {config.data} (the adapter's calibration)")
    rows = (
        _references(bench, adapter)
        + _levels(bench, adapter)
        + _gaussian(bench, adapter, trained, prompts)
    )
    report = {
        "schema": "del-eval-nlu/1",
        "command": config.command,
        "model_id": bench.loaded.model_id,
        "adapter": shown(config.adapter),
        "adapter_tensors_sha256": file_sha256(Path(config.adapter) / "adapter.safetensors"),
        "data": {"source": shown(config.data), **bench.data.describe()},
        "raw_bits_per_token": RAW_BITS * adapter.hidden_size,
        "prior_alone_rate": adapter.calibration[0].prior_alone_rate,
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    from .classification_report import render

    render(report, config.out)
    return report


def _row(method: str, runs: list[float], **fields) -> dict:
    return {"method": method, "accuracy": float(np.mean(runs)), "runs": runs, **fields}


def _references(bench: ClassifyBench, adapter: Adapter) -> list[dict]:
    dev = bench.data.dev
    majority = dev.majority
    head = adapter.task.heads[min(adapter.task.heads)]
    projected, _ = train_level(
        bench, adapter, clip_only(adapter.clip), name="projected", head=head, soft_prompt=None
    )
    return [
        _row("majority", [majority], bits_per_token=0),
        _row(
            "clean",
            [accuracy(bench, adapter, adapter.task.clean_head, None)],
            bits_per_token=RAW_BITS * adapter.hidden_size,
        ),
        _row(
            "projected",
            [accuracy(bench, adapter, projected, clip_only(adapter.clip))],
            bits_per_token=RAW_BITS * adapter.projection_dim,
        ),
    ]


def _level_fields(level: CalibratedLevel, bits_per_token: int) -> dict:
    return {
        "target_attack_rate": level.target_attack_rate,
        "mu": level.mu,
        "epsilon_token": level.epsilon_token,
        "strongest_attack": level.strongest_attack,
        "attack_rate": level.strongest.rate,
        "attack_rate_high": level.strongest.high,
        "bits_per_token": bits_per_token,
    }


def _levels(bench: ClassifyBench, adapter: Adapter) -> list[dict]:
    """DEL as served, and DEL with a head of its own but no soft prompt, at every level."""
    rows = []
    bits = adapter.projection_dim * adapter.metadata["bits"]
    for level in adapter.calibration:
        mu, fields = level.mu, _level_fields(level, bits)
        noise = binomial_noise(bench.spec(adapter, mu))
        plain, _ = train_level(
            bench,
            adapter,
            noise,
            name=f"del_mu{mu:.6g}",
            head=adapter.task.heads[mu],
            soft_prompt=None,
        )
        runs = accuracies(bench, adapter, plain, noise)
        rows += [
            _row("del", runs, **fields),
            _row("del + soft prompt", level_accuracy(bench, adapter, mu), **fields),
        ]
    return rows


def _gaussian(
    bench: ClassifyBench, adapter: Adapter, trained: dict, prompts: np.ndarray
) -> list[dict]:
    """The Gaussian mechanism on the same projection, matched to each level's target on the
    adapter's calibration `prompts`."""
    c, bits = bench.config, adapter.metadata["bits"]

    def mechanism_at(mu: float) -> GaussianQuantized:
        return GaussianQuantized(
            mu_token=mu, dim=adapter.projection_dim, bits=bits, clip=adapter.clip
        )

    levels = calibrate(
        adapter,
        attacker(bench),
        prompts,
        measured_on=f"{Path(c.data).name}, dev sentences (tokens only)",
        targets=tuple(level.target_attack_rate for level in adapter.calibration),
        bits=bits,
        seed=c.seed,
        iterations=GAUSSIAN_ITERATIONS,
        mechanism_at=mechanism_at,
        max_mu=trained["max_mu"],
    )
    rows = []
    for level, served in zip(levels, adapter.calibration, strict=True):
        noise = mechanism_noise(mechanism_at(level.mu))
        fields = _level_fields(level, adapter.projection_dim * bits)
        for method, soft in (("gaussian", None), ("gaussian + soft prompt", served.mu)):
            head, prompt = train_level(
                bench,
                adapter,
                noise,
                name=f"{method}_mu{level.mu:.6g}".replace(" ", "_"),
                head=adapter.task.heads[served.mu],
                soft_prompt=adapter.soft_prompts[soft] if soft is not None else None,
            )
            runs = accuracies(bench, adapter, head, noise, prompt)
            rows.append(_row(method, runs, **fields))
    return rows
