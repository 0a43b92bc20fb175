"""What one evaluation run measures and on how much data: one frozen object, three presets.

    smoke  seconds of work: the test suite checks the report's shape with it, not its numbers
    quick  `make eval-quick`, under 5 minutes: every stage and every attack on small samples
    full   `make eval`, the numbers the README quotes (about 3 hours on 2 cores: resumable)

Every sample size and seed lands in eval.json and in the caption of each figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from del_client.parameters import DEFAULT_BITS, DEFAULT_DELTA

from ..settings import DEFAULT_ADAPTER, DEFAULT_MODEL, SHARED_DIR
from ..train.defaults import DEFAULT_DATA, DEFAULT_PARTICLES, DEFAULT_PREFIX_STEPS

DEFAULT_OOD_DATA = str(SHARED_DIR / "data" / "wikitext-2" / "valid.txt")


@dataclass(frozen=True)
class EvalConfig:
    mode: str
    model: str = DEFAULT_MODEL
    adapter: str = DEFAULT_ADAPTER
    data: str = DEFAULT_DATA
    # Text of another domain: are the levels, calibrated in domain, still under their targets?
    ood_data: str = DEFAULT_OOD_DATA
    out: Path = Path("reports")
    bits: int = DEFAULT_BITS
    delta: float = DEFAULT_DELTA  # δ at which every ε is reported
    seed: int = 0
    # torch threads. One suits the tiny default model: its per-op work is so small that a
    # second thread costs more in synchronisation than it gives, and far more on a busy
    # machine (measured: 4 soft-prompt steps/s with one thread, 0.4 with two, under load).
    threads: int = 1
    # Slow units (a baseline's level, a method's attack row or utility) computed at once, each
    # in a worker process of `threads` threads (eval.units).
    jobs: int = 1
    # Privacy: every attack on 32-token prompts the levels were not calibrated on (held-out
    # continuations, and as many windows of the out-of-domain text).
    attack_prompts: int = 125
    calibration_prompts: int | None = None  # None: as many as the adapter was calibrated on
    calibration_iterations: int = 12  # bisection steps, as train.calibrate.ITERATIONS
    # The attacker, as the training pipeline's (train.pipeline.TrainConfig) by default.
    inversion_steps: int = 400  # training steps of the learned inversion network
    inversion_batch: int = 512
    beam_width: int = 64  # the LLM beam-search attack
    particles: int = DEFAULT_PARTICLES  # the LLM particle filter and smoother
    prefix_steps: int = DEFAULT_PREFIX_STEPS  # their mid-text prefix's training
    # Utility: held-out windows (32 prompt + 32 continuation tokens) and noise seeds.
    loss_windows: int = 256
    coherence_windows: int = 128
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    # The particle reader (an adapter that has one) is measured over the first `reader_seeds`
    # of them: each costs a particle run per window (about 1 s on the default model).
    reader_seeds: int = 2
    # Soft prompts the evaluation trains for the baselines; None: as many steps as the
    # adapter's own soft prompts had, so that every method gets the same training.
    soft_prompt_steps: int | None = None
    # Communication through gRPC.
    wire_requests: int = 16
    # Speed (del_server.tools.bench and del_client.bench, plus latency samples through gRPC).
    codec_tokens: int = 100_000
    bench_new_tokens: int = 128
    bench_repeats: int = 5
    latency_requests: int = 8  # sequential requests sampled for the latency distributions
    concurrency: tuple[int, ...] = (1, 4, 16)

    def to_dict(self) -> dict:
        """The run's identity for its checkpoints: paths as given, wherever it runs from."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


PRESETS = {
    "full": EvalConfig(mode="full"),
    "quick": EvalConfig(
        mode="quick",
        attack_prompts=24,
        calibration_prompts=24,
        calibration_iterations=8,
        inversion_steps=100,
        beam_width=16,
        particles=32,
        prefix_steps=100,
        loss_windows=32,
        coherence_windows=24,
        seeds=(0, 1, 2),
        reader_seeds=1,
        soft_prompt_steps=30,
        wire_requests=4,
        codec_tokens=20_000,
        bench_new_tokens=32,
        bench_repeats=2,
        latency_requests=3,
        concurrency=(1, 4),
    ),
    "smoke": EvalConfig(
        mode="smoke",
        attack_prompts=8,
        calibration_prompts=8,
        calibration_iterations=6,
        inversion_steps=20,
        inversion_batch=128,
        beam_width=4,
        particles=8,
        prefix_steps=10,
        loss_windows=8,
        coherence_windows=8,
        seeds=(0, 1),
        reader_seeds=1,
        soft_prompt_steps=4,
        wire_requests=2,
        codec_tokens=2000,
        bench_new_tokens=8,
        bench_repeats=1,
        latency_requests=2,
        concurrency=(1, 2),
    ),
}


def preset(mode: str, **overrides) -> EvalConfig:
    """The named preset with some fields replaced (None values are left as the preset has them)."""
    if mode not in PRESETS:
        raise ValueError(f"unknown evaluation mode {mode!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[mode], **{k: v for k, v in overrides.items() if v is not None})


# `del-server eval-frontier` (frontier.py): the μ swept, most private first.
DEFAULT_MUS = (1.0, 2.5, 4.35, 7.12, 10.0, 15.0, 25.0, 50.0)


@dataclass(frozen=True)
class FrontierConfig:
    model: str
    data: str
    adapter: Path
    out: Path
    mus: tuple[float, ...] = DEFAULT_MUS
    steps: int = 300  # per soft prompt (and the nothing-sent one)
    length: int = 16
    eval_windows: int = 256
    attack_prompts: int = 250
    bits: int | None = None  # None: the bits the adapter's projection was trained for
    seed: int = 0
    particles: int = DEFAULT_PARTICLES  # the LLM particle attacks and the posterior mixture
    prefix_steps: int = DEFAULT_PREFIX_STEPS  # the particle attacks' mid-text prefix
    command: str = ""


Point = tuple[int, int, float]  # (k, b, μ)

# `del-server eval-frontier-nlu` (classification_frontier.py): the (k, b, μ) grid. The shapes
# worth comparing at the rates the levels target: 1 to 6 coordinates, 1 to 5 bits,
# μ from the cap (64: the symbols all but deterministic) down to where the noise bites.
DEFAULT_POINTS: tuple[Point, ...] = (
    (6, 1, 64.0),
    (4, 1, 64.0),
    (4, 2, 16.0),
    (4, 2, 64.0),
    (3, 2, 32.0),
    (3, 2, 64.0),
    (2, 2, 64.0),
    (1, 2, 64.0),
    (4, 3, 16.0),
    (3, 3, 16.0),
    (2, 3, 16.0),
    (2, 3, 32.0),
    (2, 3, 64.0),
    (1, 3, 64.0),
    (1, 4, 64.0),
    (2, 4, 64.0),
    (1, 5, 64.0),
)


@dataclass(frozen=True)
class NluFrontierConfig:
    model: str
    data: str
    adapter: Path  # whose served levels the plot sets beside the grid
    out: Path
    points: tuple[Point, ...] = DEFAULT_POINTS
    projection_steps: int = 3000  # train classify's default
    attack_prompts: int = 250
    eval_seeds: tuple[int, ...] = (0, 1, 2)
    seed: int = 0
    command: str = ""


# `del-server audit` (audit.py): an attacker stronger than the calibration's.
DEFAULT_AUDIT_ATTACKS = ("bigram_marginal", "trigram_marginal", "lm_filter", "lm_smoother")
DEFAULT_AUDIT_PARTICLES = 4096  # 16× the calibration's
DEFAULT_AUDIT_TRIGRAM_KEEP = 256  # 2× the calibration's candidates (4× the pair states)


@dataclass(frozen=True)
class AuditConfig:
    model: str
    data: str
    adapter: Path
    out: Path
    prompts: int = 250
    skip: int | None = (
        None  # held-out prompts passed over; None: those the levels were calibrated on
    )
    particles: int = DEFAULT_AUDIT_PARTICLES
    trigram_keep: int = DEFAULT_AUDIT_TRIGRAM_KEEP
    prefix_steps: int = DEFAULT_PREFIX_STEPS  # the particle attacks' mid-text prefix
    attacks: tuple[str, ...] = DEFAULT_AUDIT_ATTACKS
    levels: tuple[float, ...] = ()  # the targets of the levels audited; empty: every level
    mus: tuple[float, ...] = ()  # candidate μ audited instead of levels
    seed: int = 1  # the noise draw: not the calibration's (0)
    threads: int = 1  # torch threads per process
    jobs: int = 1  # levels attacked at once, each in its own process
    reuse: bool = False  # keep the rows of OUT/audit.json that still apply
    command: str = ""
