"""`del-server train {all,projection,soft-prompt}` and `del-server calibrate`.

    del-server train all --model M --data TEXT --out DIR        every stage + report
    del-server train projection --model M --data TEXT --out DIR  W_p, W_d, clip
    del-server calibrate --model M --data TEXT --out DIR         levels for DIR's adapter
    del-server train soft-prompt --model M --data TEXT --out DIR soft prompts for DIR's levels
    del-server train evaluate --model M --data TEXT --out DIR    each level's utility against
                                                        sending nothing (and a posterior
                                                        adapter's particle reader), DIR's
                                                        report refreshed
    del-server train recalibrate --model M --data TEXT --out DIR every stage but the
                                                        projection, on DIR's adapter: new
                                                        levels when the attacks grow stronger
    del-server train classify --model all-MiniLM-L6-v2 --data DIR --out DIR
                                                        an encoder's adapter for a labelled task

Every command reads and writes the adapter in --out, so the stages chain; `train all` also
writes training.json, TRAINING.md and a loss plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from del_client.parameters import DEFAULT_BITS

from .. import argtypes
from ..cli import reproducible_command
from ..extras import require_extra
from ..settings import DEFAULT_MODEL
from .defaults import (
    DEFAULT_DATA,
    DEFAULT_NLU_DATA,
    DEFAULT_NLU_MODEL,
    DEFAULT_PARTICLES,
    DEFAULT_READER_PARTICLES,
    DEFAULT_TARGETS,
    DEFAULT_TRIGRAM_KEEP,
    MU_RANGE,
)


def _trained(text: str) -> Path:
    """--out of a stage that continues a trained adapter, checked before the model loads."""
    directory = Path(text)
    if not (directory / "training.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{directory.absolute()} holds no trained adapter (training.json): train one with "
            f"`del-server train all --out {text}`"
        )
    return directory


def _common(parser: argparse.ArgumentParser, *, trained: bool = False) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="path or hub id")
    parser.add_argument("--data", default=DEFAULT_DATA, help="a text file or a directory of *.txt")
    parser.add_argument(
        "--out",
        type=_trained if trained else Path,
        required=True,
        help="adapter directory" + (", as `train all` wrote it" if trained else ""),
    )
    parser.add_argument("--dim", type=argtypes.positive_int, default=16, help="projection dim k")
    parser.add_argument("--bits", type=argtypes.bits, default=DEFAULT_BITS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=argtypes.positive_int, default=32)
    parser.add_argument("--resume", action="store_true", help="continue from out/checkpoints")


def _projection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--projection-steps", type=argtypes.count, default=800)
    parser.add_argument(
        "--noise-mu", type=argtypes.positive_float, help="train the projection with this noise"
    )


def _max_mu_arg(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument(
        "--max-mu",
        type=argtypes.positive_floats,
        default=default,
        help="no level's μ above it; comma-separated: one cap per --targets, in its order "
        "(e.g. a μ that `del-server audit --mu` found to hold against a stronger attacker)",
    )


def _max_mu(args: argparse.Namespace, targets: tuple[float, ...]) -> tuple[float, ...]:
    """Each target's cap, checked against --targets before anything trains (a command
    without --max-mu calibrates nothing: MU_RANGE's top then)."""
    from .calibrate import mu_caps

    return mu_caps(getattr(args, "max_mu", MU_RANGE[1]), targets)


def _calibration_args(
    parser: argparse.ArgumentParser,
    *,
    window_tokens: int = 32,
    beam: bool = True,
    targets: tuple[float, ...] = DEFAULT_TARGETS,
    inversion_steps: int = 400,
) -> None:
    parser.add_argument(
        "--targets",
        type=argtypes.rates,
        default=targets,
        help="target attack success rates, comma-separated",
    )
    parser.add_argument(
        "--calibration-prompts",
        type=argtypes.positive_int,
        default=250,
        help=f"held-out prompts every attack is measured on ({window_tokens} tokens each)",
    )
    parser.add_argument(
        "--inversion-steps",
        type=argtypes.count,
        default=inversion_steps,
        help="learned attack training",
    )
    parser.add_argument(
        "--trigram-keep",
        type=argtypes.positive_int,
        default=DEFAULT_TRIGRAM_KEEP,
        help="the trigram attack's candidates per position",
    )
    if beam:  # generation's (classification has its own --max-mu)
        _max_mu_arg(parser, default=MU_RANGE[1])
        parser.add_argument(
            "--beam-width",
            type=argtypes.positive_int,
            default=64,
            help="the LLM beam attack's width",
        )
        parser.add_argument(
            "--particles",
            type=argtypes.positive_int,
            default=DEFAULT_PARTICLES,
            help="the LLM particle attacks' particles per prompt",
        )


def _reader_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reader-particles",
        type=argtypes.count,
        default=DEFAULT_READER_PARTICLES,
        help="particles of the particle reader a posterior adapter gains (the server decodes "
        "each private prompt by the LLM's posterior and continues one particle); 0: none, "
        "the levels' soft prompts read the prompts",
    )
    parser.add_argument(
        "--jobs",
        type=argtypes.positive_int,
        default=1,
        help="reader measurements (each level's, nothing sent's) at once, each in its own "
        "process of one torch thread (default 1: one after another, in this process)",
    )


def _soft_prompt_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--length", type=argtypes.positive_int, default=8, help="soft prompt vectors m"
    )
    parser.add_argument("--soft-prompt-steps", type=argtypes.positive_int, default=600)
    parser.add_argument(
        "--mu", type=argtypes.positive_floats, default=(), help="levels (default: calibrated)"
    )
    parser.add_argument(
        "--front-end",
        choices=("linear", "posterior"),
        help="how the server reads a private prompt: W_d·x̂ (the paper's), or the posterior "
        "mean embedding under the attacker's bigram prior, trained with each soft prompt "
        "(default: as the adapter in --out has it; linear for a new one)",
    )


def _pipeline():
    """The training pipeline, imported when a command runs (it plots with matplotlib)."""
    require_extra("train", "del-server train")
    from . import pipeline

    return pipeline


def _config(args: argparse.Namespace):
    return _pipeline().TrainConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        dim=args.dim,
        bits=args.bits,
        seed=args.seed,
        batch=args.batch,
        resume=args.resume,
        projection_steps=getattr(args, "projection_steps", 0),
        projection_noise_mu=getattr(args, "noise_mu", None),
        targets=getattr(args, "targets", DEFAULT_TARGETS),
        max_mu=_max_mu(args, getattr(args, "targets", DEFAULT_TARGETS)),
        keep_other_levels=getattr(args, "keep_other_levels", False),
        calibration_prompts=getattr(args, "calibration_prompts", 250),
        inversion_steps=getattr(args, "inversion_steps", 400),
        beam_width=getattr(args, "beam_width", 64),
        particles=getattr(args, "particles", DEFAULT_PARTICLES),
        trigram_keep=getattr(args, "trigram_keep", DEFAULT_TRIGRAM_KEEP),
        reader_particles=getattr(args, "reader_particles", DEFAULT_READER_PARTICLES),
        jobs=getattr(args, "jobs", 1),
        soft_prompt_length=getattr(args, "length", 8),
        soft_prompt_steps=getattr(args, "soft_prompt_steps", 0),
        soft_prompt_mus=getattr(args, "mu", ()),
        front_end=getattr(args, "front_end", None),
        command=reproducible_command(),
    )


def _run_all(args: argparse.Namespace) -> None:
    adapter = _pipeline().run_all(_config(args))
    print(f"adapter written to {args.out}: levels μ = {sorted(adapter.soft_prompts)}")


def _run_stage(name: str, needs_adapter: bool):
    def run(args: argparse.Namespace) -> None:
        from ..adapter import Adapter

        stage = getattr(_pipeline(), name)
        bench = _pipeline().Workbench.open(_config(args))
        adapter = stage(bench, Adapter.load(args.out)) if needs_adapter else stage(bench)
        adapter.save(args.out)
        print(f"adapter written to {args.out}")

    return run


def _run_recalibrate(args: argparse.Namespace) -> None:
    adapter = _pipeline().recalibrate(_config(args))
    print(f"adapter recalibrated in {args.out}: levels μ = {sorted(adapter.soft_prompts)}")


def _run_evaluate(args: argparse.Namespace) -> None:
    adapter = _pipeline().refresh_evaluation(_config(args))
    worse = [
        f"{level.target_attack_rate:g}"
        for level in adapter.calibration
        if not level.utility.better_than_nothing
    ]
    print(
        f"utility written to {args.out}; levels no better than sending nothing: "
        f"{', '.join(worse) or 'none'}"
    )


def _add_classify(stages: argparse._SubParsersAction) -> None:
    from .classification.pipeline import ClassifyConfig

    defaults = ClassifyConfig(model="", data="", out=Path())
    classify = stages.add_parser(
        "classify",
        help="an encoder's adapter for a classification task: projection, calibration, "
        "per level a soft prompt and a head",
    )
    classify.add_argument("--model", default=DEFAULT_NLU_MODEL, help="an encoder: path or name")
    classify.add_argument(
        "--data", default=DEFAULT_NLU_DATA, help="directory with train.tsv and dev.tsv"
    )
    classify.add_argument("--out", type=Path, required=True, help="adapter directory")
    classify.add_argument(
        "--dim", type=argtypes.positive_int, default=defaults.dim, help="projection dim k"
    )
    classify.add_argument("--bits", type=argtypes.bits, default=defaults.bits)
    classify.add_argument(
        "--projection-mu",
        type=argtypes.positive_float,
        default=defaults.projection_mu,
        help="the noise the projection is trained with",
    )
    classify.add_argument(
        "--projection-steps", type=argtypes.count, default=defaults.projection_steps
    )
    classify.add_argument(
        "--projection-lr", type=argtypes.positive_float, default=defaults.projection_lr
    )
    classify.add_argument(
        "--front-end-steps",
        type=argtypes.count,
        default=defaults.front_end_steps,
        help="W_d, soft prompt and head through the encoder",
    )
    classify.add_argument(
        "--level-steps",
        type=argtypes.count,
        default=defaults.level_steps,
        help="per level and clean head",
    )
    classify.add_argument(
        "--held-out",
        type=argtypes.positive_int,
        default=defaults.held_out,
        help="training sentences held out for model selection (their phrases leave training)",
    )
    classify.add_argument(
        "--check-every",
        type=argtypes.positive_int,
        default=defaults.check_every,
        help="steps between held-out checks: every stage ends on its best check",
    )
    _max_mu_arg(classify, default=defaults.max_mu)
    classify.add_argument(
        "--length", type=argtypes.positive_int, default=defaults.soft_prompt_length
    )
    classify.add_argument("--lr", type=argtypes.positive_float, default=defaults.lr)
    classify.add_argument("--batch", type=argtypes.positive_int, default=defaults.batch)
    classify.add_argument("--seed", type=int, default=defaults.seed)
    classify.add_argument("--resume", action="store_true", help="continue from out/checkpoints")
    _calibration_args(
        classify,
        window_tokens=defaults.calibration_length,
        beam=False,
        targets=defaults.targets,
        inversion_steps=defaults.inversion_steps,
    )
    classify.set_defaults(run=_run_classify)


def _run_classify(args: argparse.Namespace) -> None:
    require_extra("train", "del-server train classify")
    from .classification.pipeline import ClassifyConfig, run_all

    config = ClassifyConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        dim=args.dim,
        bits=args.bits,
        projection_mu=args.projection_mu,
        projection_steps=args.projection_steps,
        projection_lr=args.projection_lr,
        front_end_steps=args.front_end_steps,
        level_steps=args.level_steps,
        held_out=args.held_out,
        check_every=args.check_every,
        max_mu=_max_mu(args, args.targets),
        trigram_keep=args.trigram_keep,
        soft_prompt_length=args.length,
        lr=args.lr,
        batch=args.batch,
        seed=args.seed,
        resume=args.resume,
        targets=args.targets,
        calibration_prompts=args.calibration_prompts,
        inversion_steps=args.inversion_steps,
        command=reproducible_command(),
    )
    adapter = run_all(config)
    print(f"adapter written to {args.out}: levels μ = {sorted(adapter.task.heads)}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train the projection and soft prompts (offline)")
    stages = train.add_subparsers(dest="stage", required=True)
    everything = stages.add_parser("all", help="projection, calibration, soft prompts, report")
    for add in (_common, _projection_args, _calibration_args, _soft_prompt_args, _reader_args):
        add(everything)
    everything.set_defaults(run=_run_all)
    projection = stages.add_parser("projection", help="W_p, W_d from PCA, fine-tuned")
    _common(projection)
    _projection_args(projection)
    projection.set_defaults(run=_run_stage("projection_stage", needs_adapter=False))
    soft = stages.add_parser("soft-prompt", help="one soft prompt per privacy level")
    _common(soft)
    _soft_prompt_args(soft)
    soft.set_defaults(run=_run_stage("soft_prompt_stage", needs_adapter=True))
    evaluate = stages.add_parser(
        "evaluate",
        help="each level's held-out loss as served against sending nothing (a soft prompt "
        "trained for that case): the levels' utility and the report, nothing else retrained",
    )
    _common(evaluate, trained=True)
    _reader_args(evaluate)
    evaluate.set_defaults(run=_run_evaluate)
    recalibrate = stages.add_parser(
        "recalibrate",
        help="new levels for a trained adapter, its projection kept: calibration against "
        "today's attacks, soft prompts, evaluation, report",
    )
    _common(recalibrate, trained=True)
    for add in (_calibration_args, _soft_prompt_args, _reader_args):
        add(recalibrate)
    recalibrate.add_argument(
        "--keep-other-levels",
        action="store_true",
        help="recalibrate only the levels of --targets; the others keep their μ, record, "
        "soft prompt and front-end (give the soft-prompt options the adapter was trained with, "
        "so that the new level's training matches theirs)",
    )
    recalibrate.set_defaults(run=_run_recalibrate)
    _add_classify(stages)
    calibrate = sub.add_parser("calibrate", help="privacy level per target attack success rate")
    _common(calibrate)
    _calibration_args(calibrate)
    calibrate.set_defaults(run=_run_stage("calibration_stage", needs_adapter=True))
