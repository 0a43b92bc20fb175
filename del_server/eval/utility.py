"""Utility of each method on held-out text, over several noise seeds.

    loss        mean next-token NLL (nats/token) of the real continuation after the prompt
                (FrozenLM.continuation_nlls: the same scoring as the training report); read
                by the particle reader, the served blend's exact NLL (reading.py)
    perplexity  e^loss
    coherence   cosine of sentence embeddings, generated continuation vs the real one

A seed fixes the noise of every prompt token; the same seed gives the same noise to a method
with and without its soft prompt, so those two are paired draw for draw. Methods without
noise are measured once; the particle reader over the first `reader_seeds` seeds. Intervals
are 95 % Student-t intervals over the seeds' means; comparisons between methods are paired
over windows (same held-out text for all), on each window's mean over seeds.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import stats

from ..train.evaluate import EVAL_BATCH
from .coherence import SentenceEncoder, cosine_per_window, decode, greedy_continuations
from .context import EvalContext
from .methods import Method
from .reading import ignore_prompt, read
from .units import checkpointed


def spread(values: list[float]) -> dict:
    """Mean, sample std and the 95 % t-interval half-width over independent seeds."""
    n = len(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "ci95": half, "seeds": n}


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of a − b over paired windows with a normal 95 % interval, and what it says."""
    diff = a - b
    half = 1.96 * float(np.std(diff, ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    mean = float(np.mean(diff))
    verdict = "higher" if mean - half > 0 else "lower" if mean + half < 0 else "indistinguishable"
    return {"mean": mean, "ci95": half, "windows": len(diff), "verdict": verdict}


@dataclass(frozen=True)
class SeedRun:
    """One noise seed's measurement of a method."""

    nlls: torch.Tensor  # (N,) per loss window: nats, summed over its continuation
    cosines: np.ndarray  # (n,) per coherence window
    texts: list[str]  # the generated continuations


@dataclass
class Measured:
    """One method's utility: summaries for the report, per-window values for comparisons."""

    method: Method
    loss: dict
    perplexity: dict
    coherence: dict
    loss_windows: np.ndarray  # (n,) nats/token, mean over seeds, per window
    coherence_windows: np.ndarray  # (n,) mean over seeds, per window
    sample: tuple[str, str]  # (generated, reference) of the first window and seed, to read
    reader: dict | None = None  # the particle reader's λ, particles and seeds, if read so

    def to_dict(self) -> dict:
        return {
            **self.method.describe(),
            "loss": self.loss,
            "perplexity": self.perplexity,
            "coherence": self.coherence,
            **({"read_by": self.reader} if self.reader else {}),
        }

    def record(self) -> dict:
        """Everything measured, as JSON (for eval.checkpoint)."""
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "coherence": self.coherence,
            "loss_windows": self.loss_windows.tolist(),
            "coherence_windows": self.coherence_windows.tolist(),
            "sample": list(self.sample),
            "reader": self.reader,
        }

    @classmethod
    def from_record(cls, method: Method, record: dict) -> Measured:
        return cls(
            method=method,
            loss=record["loss"],
            perplexity=record["perplexity"],
            coherence=record["coherence"],
            loss_windows=np.asarray(record["loss_windows"]),
            coherence_windows=np.asarray(record["coherence_windows"]),
            sample=tuple(record["sample"]),
            reader=record["reader"],
        )


class UtilityBench:
    """The held-out windows, their reference embeddings and the encoder, prepared once."""

    def __init__(self, ctx: EvalContext, encoder: SentenceEncoder) -> None:
        config, validation = ctx.config, ctx.split.validation
        if config.coherence_windows > config.loss_windows:
            raise ValueError("coherence is measured on the first of the loss windows")
        self.ctx = ctx
        self.encoder = encoder
        self.loss_windows = validation.head(config.loss_windows)
        self.coherence_windows = validation.head(config.coherence_windows)
        self.references = decode(
            ctx.loaded.tokenizer, self.coherence_windows.continuations.tolist()
        )
        self.reference_embeddings = encoder.embed(self.references)

    def measure(self, method: Method) -> Measured:
        config, reader = self.ctx.config, None
        if method.reader is not None:
            seeds = config.seeds[: config.reader_seeds]
        elif method.mechanism is None:
            seeds = (config.seed,)  # nothing random: once
        else:
            seeds = config.seeds
        if method.reader is not None:
            weight = ignore_prompt(self.ctx, method)
            reader = {"ignore_prompt": weight, "particles": method.reader.particles}
            runs = [self._read(method, weight, seed) for seed in seeds]
        else:
            runs = [self._run(method, seed) for seed in seeds]
        tokens = self.loss_windows.continuations.shape[1]
        per_window = [run.nlls.numpy() / tokens for run in runs]
        losses = [float(np.mean(nlls)) for nlls in per_window]
        return Measured(
            method=method,
            loss=spread(losses),
            perplexity=spread([math.exp(x) for x in losses]),
            coherence=spread([float(np.mean(run.cosines)) for run in runs]),
            loss_windows=np.mean(per_window, axis=0),
            coherence_windows=np.mean([run.cosines for run in runs], axis=0),
            sample=(runs[0].texts[0], self.references[0]),
            reader=reader and {**reader, "seeds": len(seeds)},
        )

    def _run(self, method: Method, seed: int) -> SeedRun:
        """One seed through the method's prompt path."""
        lm, windows = self.ctx.lm, self.loss_windows
        rng = np.random.default_rng([seed, 0])
        with torch.no_grad():
            nlls = torch.cat(
                [
                    lm.continuation_nlls(
                        method.prompt(lm, windows.prompts[i : i + EVAL_BATCH], rng),
                        windows.continuations[i : i + EVAL_BATCH],
                        method.soft_prompt,
                    ).cpu()
                    for i in range(0, len(windows), EVAL_BATCH)
                ]
            )
        return self._scored(nlls, self._continued(method, np.random.default_rng([seed, 1])))

    def _continued(self, method: Method, rng: np.random.Generator) -> list[list[int]]:
        ctx, windows = self.ctx, self.coherence_windows
        with torch.no_grad():
            prompt = method.prompt(ctx.lm, windows.prompts, rng)
            prefix = ctx.lm.prefix(prompt, len(windows), method.soft_prompt)
        return greedy_continuations(
            ctx.lm, prefix, windows.continuations.shape[1], ctx.loaded.eos_id
        )

    def _read(self, method: Method, weight: float, seed: int) -> SeedRun:
        """One seed through the particle reader."""
        found = read(self.ctx, method, weight, self.loss_windows, len(self.coherence_windows), seed)
        return self._scored(found.nlls, found.continuations)

    def _scored(self, nlls: torch.Tensor, rows: list[list[int]]) -> SeedRun:
        texts = decode(self.ctx.loaded.tokenizer, rows)
        cosines = cosine_per_window(self.encoder.embed(texts), self.reference_embeddings)
        return SeedRun(nlls, cosines, texts)


def utility_stage(ctx: EvalContext, methods: list[Method]) -> list[Measured]:
    """Every method's utility, `config.jobs` at a time (eval.units)."""
    records = checkpointed(
        ctx, _utility_record, {f"utility/{m.key}": m for m in methods}, desc="utility"
    )
    return [Measured.from_record(m, records[f"utility/{m.key}"]) for m in methods]


def _utility_record(ctx: EvalContext, method: Method) -> dict:
    return utility_bench(ctx).measure(method).record()


@lru_cache(maxsize=1)
def utility_bench(ctx: EvalContext) -> UtilityBench:
    """The context's bench (its encoder loaded once per process)."""
    return UtilityBench(ctx, SentenceEncoder())
