"""Utility of each method on held-out text, over several noise seeds.

    loss        mean next-token NLL (nats/token) of the real continuation after the prompt
                (train.evaluate.mean_loss: the same scoring as the training report)
    perplexity  e^loss
    coherence   cosine of sentence embeddings, generated continuation vs the real one

A seed fixes the noise of every prompt token; the same seed gives the same noise to a method
with and without its soft prompt, so those two are paired draw for draw. Methods without
noise are measured once. Intervals are 95 % Student-t intervals over the seeds' means;
comparisons between methods are paired over windows (same held-out text for all).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from ..train.evaluate import mean_loss
from .coherence import SentenceEncoder, cosine_per_window, decode, greedy_continuations
from .context import EvalContext
from .methods import Method


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


@dataclass
class Measured:
    """One method's utility: summaries for the report, per-window coherence for comparisons."""

    method: Method
    loss: dict
    perplexity: dict
    coherence: dict
    coherence_windows: np.ndarray  # (n,) mean over seeds, per window
    sample: tuple[str, str]  # (generated, reference) of the first window and seed, to read

    def to_dict(self) -> dict:
        return {
            **self.method.describe(),
            "loss": self.loss,
            "perplexity": self.perplexity,
            "coherence": self.coherence,
        }

    def record(self) -> dict:
        """Everything measured, as JSON (for eval.checkpoint)."""
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "coherence": self.coherence,
            "coherence_windows": self.coherence_windows.tolist(),
            "sample": list(self.sample),
        }

    @classmethod
    def from_record(cls, method: Method, record: dict) -> Measured:
        return cls(
            method=method,
            loss=record["loss"],
            perplexity=record["perplexity"],
            coherence=record["coherence"],
            coherence_windows=np.asarray(record["coherence_windows"]),
            sample=tuple(record["sample"]),
        )


class UtilityBench:
    """The held-out windows, their reference embeddings and the encoder, prepared once."""

    def __init__(self, ctx: EvalContext, encoder: SentenceEncoder) -> None:
        config, validation = ctx.config, ctx.split.validation
        self.ctx = ctx
        self.encoder = encoder
        self.loss_windows = validation.head(config.loss_windows)
        self.coherence_windows = validation.head(config.coherence_windows)
        self.references = decode(
            ctx.loaded.tokenizer, self.coherence_windows.continuations.tolist()
        )
        self.reference_embeddings = encoder.embed(self.references)

    def measure(self, method: Method) -> Measured:
        ctx = self.ctx
        lm, seeds = ctx.lm, ctx.config.seeds if method.mechanism is not None else (ctx.config.seed,)
        losses, coherences, per_window, first_texts = [], [], [], None
        for seed in seeds:
            rng = np.random.default_rng([seed, 0])
            prompt_fn = lambda ids, rng=rng: method.prompt(lm, ids, rng)  # noqa: E731
            losses.append(mean_loss(lm, self.loss_windows, prompt_fn, method.soft_prompt))
            cosines, texts = self._coherence(method, np.random.default_rng([seed, 1]))
            coherences.append(float(np.mean(cosines)))
            per_window.append(cosines)
            first_texts = first_texts or texts
        return Measured(
            method=method,
            loss=spread(losses),
            perplexity=spread([math.exp(x) for x in losses]),
            coherence=spread(coherences),
            coherence_windows=np.mean(per_window, axis=0),
            sample=(first_texts[0], self.references[0]),
        )

    def _coherence(self, method: Method, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        ctx, windows = self.ctx, self.coherence_windows
        with torch.no_grad():
            prompt = method.prompt(ctx.lm, windows.prompts, rng)
            prefix = ctx.lm.prefix(prompt, len(windows), method.soft_prompt)
        rows = greedy_continuations(
            ctx.lm, prefix, windows.continuations.shape[1], ctx.loaded.eos_id
        )
        texts = decode(ctx.loaded.tokenizer, rows)
        return cosine_per_window(self.encoder.embed(texts), self.reference_embeddings), texts


def utility_stage(bench: UtilityBench, methods: list[Method]) -> list[Measured]:
    checkpoints, measured = bench.ctx.checkpoints, []
    for method in tqdm(methods, desc="utility", unit="method"):
        record = checkpoints.record(
            f"utility/{method.key}", lambda m=method: bench.measure(m).record()
        )
        measured.append(Measured.from_record(method, record))
    return measured
