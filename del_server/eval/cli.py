"""`del-server eval [--quick | --smoke] [--adapter DIR] [--out DIR] ...`

    del-server eval                 the full run (`make eval`): the numbers the README quotes
    del-server eval --quick         small samples, under 5 minutes (`make eval-quick`)
    del-server eval --smoke         seconds: what the test suite runs to check the report's shape
    del-server eval --render-only   redraw EVAL.md and the figures from OUT/eval.json
    del-server eval --resume        continue a stopped run from OUT/checkpoints
    del-server eval-nlu             a classification adapter's levels against baselines
                                    (`make eval-nlu`: docs/eval-nlu/)
    del-server eval-frontier        generation: loss against attack rate over a sweep of μ,
                                    per front-end (`make frontier`: docs/eval/frontier/)
    del-server eval-frontier-nlu    classification: dev accuracy against attack rate over a
                                    grid of (k, b, μ) (`make frontier-nlu`)
    del-server eval-frontier-compare DIR...  several eval-frontier records on one plot, each
                                    one's gain read off at 10, 15 and 20 % attack bounds
    del-server audit                an adapter's levels against a stronger attacker on fresh
                                    held-out prompts: does each still hold? (exit 1: no)

Writes OUT/eval.json, OUT/EVAL.md and the PNG figures (OUT defaults to reports/).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import NoReturn

from del_client.manifest import percent
from del_client.parameters import MAX_BITS, MIN_BITS

from .. import argtypes
from ..cli import EXIT_OPERATOR_ERROR, reproducible_command
from ..extras import require_extra
from ..paths import shown
from ..settings import DEFAULT_NLU_ADAPTER
from ..train.defaults import DEFAULT_NLU_DATA, DEFAULT_NLU_MODEL
from .config import (
    DEFAULT_ADAPTER,
    DEFAULT_AUDIT_ATTACKS,
    DEFAULT_DATA,
    DEFAULT_MODEL,
    DEFAULT_MUS,
    DEFAULT_OOD_DATA,
    DEFAULT_POINTS,
    AuditConfig,
    FrontierConfig,
    NluFrontierConfig,
    Point,
    preset,
)


def _run(args: argparse.Namespace) -> None:
    require_extra("eval", "del-server eval")
    from .pipeline import render, run  # torch, transformers, the encoder: only when it runs
    from .report import SCHEMA

    if args.render_only:
        report = _stored_report(args.out / "eval.json", "eval", "no evaluation to redraw")
        if report.get("schema") != SCHEMA:
            _refuse(
                "eval",
                f"{args.out}/eval.json has schema {report.get('schema')!r}; this version draws "
                f"{SCHEMA!r}: rerun the evaluation",
            )
        render(report, args.out)
        print(f"{args.out}/EVAL.md and figures redrawn from {args.out}/eval.json")
        return
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    config = preset(
        mode,
        model=args.model,
        adapter=str(args.adapter),
        data=args.data,
        ood_data=args.ood_data,
        out=args.out,
        seed=args.seed,
        threads=args.threads,
        jobs=args.jobs,
        soft_prompt_steps=args.soft_prompt_steps,
    )
    report = run(config, command=reproducible_command(), resume=args.resume)
    print(f"{args.out}/EVAL.md written in {report['timings']['total_s'] / 60:.1f} min")
    for line in report["findings"]["utility"]:
        print(f"- {line}")


def _run_nlu(args: argparse.Namespace) -> None:
    require_extra("eval", "del-server eval-nlu")
    from .classification import NluEvalConfig, run

    report = run(
        NluEvalConfig(
            model=args.model,
            adapter=args.adapter,
            data=args.data,
            out=args.out,
            level_steps=args.level_steps,
            command=reproducible_command(),
        )
    )
    print(f"{args.out}/EVAL.md written in {report['seconds'] / 60:.1f} min")
    for row in report["rows"]:
        print(
            f"- {row['method']:<24} {row.get('target_attack_rate', 0):>5.0%} {row['accuracy']:.1%}"
        )


def _add_nlu(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval-nlu",
        help="a classification adapter: dev accuracy per level against its attack rate and "
        "baselines, with a plot",
    )
    parser.add_argument("--model", default=DEFAULT_NLU_MODEL, help="the encoder: path or name")
    parser.add_argument(
        "--adapter",
        type=_trained_adapter,
        default=Path(DEFAULT_NLU_ADAPTER),
        help="trained adapter",
    )
    parser.add_argument("--data", default=DEFAULT_NLU_DATA, help="directory with the task's TSVs")
    parser.add_argument("--out", type=Path, default=Path("reports/eval-nlu"))
    parser.add_argument(
        "--level-steps",
        type=argtypes.positive_int,
        help="baselines' training steps (default: the adapter's)",
    )
    parser.set_defaults(run=_run_nlu)


def _run_frontier(args: argparse.Namespace) -> None:
    require_extra("eval", "del-server eval-frontier")
    from .frontier import KINDS, crossover, run

    report = run(
        FrontierConfig(
            model=args.model,
            data=args.data,
            adapter=args.adapter,
            out=args.out,
            mus=args.mu,
            steps=args.steps,
            eval_windows=args.eval_windows,
            attack_prompts=args.attack_prompts,
            particles=args.particles,
            bits=args.bits,
            command=reproducible_command(),
        )
    )
    print(f"{args.out}/FRONTIER.md written in {report['seconds'] / 60:.1f} min")
    for kind in KINDS:
        point = crossover(report, kind)
        found = f"beats nothing sent from μ = {point['mu']:g}" if point else "never beats nothing"
        print(f"- {kind}: {found}")


def _run_frontier_nlu(args: argparse.Namespace) -> None:
    require_extra("eval", "del-server eval-frontier-nlu")
    from .classification_frontier import TARGETS, best_under, refresh_served, run

    given = [  # the grid options given: (flag, NluFrontierConfig's field, value)
        (flag, field, value)
        for flag, field, value in (
            ("--point", "points", args.point),
            ("--projection-steps", "projection_steps", args.projection_steps),
            ("--attack-prompts", "attack_prompts", args.attack_prompts),
        )
        if value is not None
    ]
    if args.served_only:
        if given:
            unused = ", ".join(flag for flag, _, _ in given)
            _refuse("eval-frontier-nlu", f"--served-only keeps the grid: {unused} unused")
        stored = _stored_report(
            args.out / "frontier.json", "eval-frontier-nlu", "no grid to add to"
        )
        report = refresh_served(stored, args.adapter, args.out, reproducible_command())
        print(f"{args.out}/FRONTIER.md redrawn with {shown(args.adapter)}'s levels as served")
    else:
        config = NluFrontierConfig(
            model=args.model,
            data=args.data,
            adapter=args.adapter,
            out=args.out,
            command=reproducible_command(),
            **{field: value for _, field, value in given},
        )
        report = run(config)
        print(f"{args.out}/FRONTIER.md written in {report['seconds'] / 60:.1f} min")
    for target in TARGETS:
        best = best_under(report, target)
        found = (
            f"k={best['k']} b={best['bits']} μ={best['mu']:g}: {best['accuracy']:.1%}"
            if best
            else "no point"
        )
        print(f"- best under {percent(target)}: {found}")


def _points(text: str) -> tuple[Point, ...]:
    """'k,b,mu;k,b,mu;…' -> the grid's points."""
    points = []
    for part in text.split(";"):
        try:
            k, b, mu = part.split(",")
            point = (int(k), int(b), float(mu))
        except ValueError:
            point = None
        if (
            point is None
            or point[0] < 1
            or point[1] < MIN_BITS
            or point[1] > MAX_BITS
            or not 0 < point[2] < math.inf
        ):
            raise argparse.ArgumentTypeError(
                f"expected k,b,mu;… with k >= 1, {MIN_BITS} <= b <= {MAX_BITS}, finite mu > 0; "
                f"got {part!r}"
            )
        points.append(point)
    return tuple(points)


def _add_frontier_nlu(sub: argparse._SubParsersAction) -> None:
    defaults = NluFrontierConfig(model="", data="", adapter=Path(), out=Path())
    parser = sub.add_parser(
        "eval-frontier-nlu",
        help="classification: dev accuracy against the strongest attack over a grid of "
        "coordinates, bits and μ (a projection trained per point), with a plot",
    )
    parser.add_argument("--model", default=DEFAULT_NLU_MODEL, help="the encoder: path or name")
    parser.add_argument(
        "--adapter",
        type=_trained_adapter,
        default=Path(DEFAULT_NLU_ADAPTER),
        help="whose served levels are plotted beside the grid",
    )
    parser.add_argument("--data", default=DEFAULT_NLU_DATA, help="directory with the task's TSVs")
    parser.add_argument("--out", type=Path, default=Path("reports/frontier-nlu"))
    parser.add_argument(
        "--point",
        type=_points,
        help=f"semicolon-separated k,b,mu (default: {len(DEFAULT_POINTS)} points, "
        "1-6 coordinates, 1-5 bits)",
    )
    parser.add_argument(
        "--projection-steps",
        type=argtypes.positive_int,
        help=f"per point (default: {defaults.projection_steps})",
    )
    parser.add_argument(
        "--attack-prompts",
        type=argtypes.positive_int,
        help=f"windows of dev sentences attacked per point (default: {defaults.attack_prompts})",
    )
    parser.add_argument(
        "--served-only",
        action="store_true",
        help="set --adapter's levels as served beside OUT/frontier.json's grid and redraw, in "
        "seconds (after retraining the adapter: the grid never reads it)",
    )
    parser.set_defaults(run=_run_frontier_nlu)


def _stored_report(path: Path, command: str, missing: str) -> dict:
    """An earlier run's record that a redraw starts from, or a one-line refusal (exit 2) when
    --out points where there is none."""
    if not path.is_file():
        _refuse(command, f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        _refuse(command, f"{path} is not a record this command wrote ({error})")


def _refuse(command: str, reason: str) -> NoReturn:
    print(f"del-server {command}: error: {reason}", file=sys.stderr)
    raise SystemExit(EXIT_OPERATOR_ERROR)


def _trained_adapter(text: str) -> Path:
    """--adapter: a directory `del-server train` wrote, found before anything loads (an
    evaluation would otherwise fail minutes in, after training its baselines)."""
    directory = Path(text)
    if not (directory / "adapter.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{directory.absolute()} holds no adapter.json: give a directory that "
            "`del-server train` wrote (`del-server train --help`)"
        )
    return directory


def _add_frontier(sub: argparse._SubParsersAction) -> None:
    defaults = FrontierConfig(model="", data="", adapter=Path(), out=Path())
    parser = sub.add_parser(
        "eval-frontier",
        help="generation: held-out loss against the strongest attack over a sweep of μ, for "
        "each front-end, beside sending nothing, with a plot",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="path or hub id")
    parser.add_argument(
        "--adapter", type=_trained_adapter, default=Path(DEFAULT_ADAPTER), help="trained adapter"
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help="the text the adapter was trained on")
    parser.add_argument("--out", type=Path, default=Path("reports/frontier"))
    parser.add_argument(
        "--mu",
        type=argtypes.positive_floats,
        default=DEFAULT_MUS,
        help=f"comma-separated μ per token (default {','.join(map(str, DEFAULT_MUS))})",
    )
    parser.add_argument(
        "--steps",
        type=argtypes.positive_int,
        default=defaults.steps,
        help="training steps per soft prompt",
    )
    parser.add_argument(
        "--eval-windows",
        type=argtypes.positive_int,
        default=defaults.eval_windows,
        help="held-out windows scored",
    )
    parser.add_argument(
        "--attack-prompts",
        type=argtypes.positive_int,
        default=defaults.attack_prompts,
        help="held-out prompts attacked per μ",
    )
    parser.add_argument(
        "--particles",
        type=argtypes.positive_int,
        default=defaults.particles,
        help="particles per prompt: the LLM attacks' and the posterior mixture's",
    )
    parser.add_argument(
        "--bits",
        type=argtypes.bits,
        help="bits per coordinate (default: those the adapter's projection was trained for)",
    )
    parser.set_defaults(run=_run_frontier)


def _frontier_record(text: str) -> Path:
    """A directory `del-server eval-frontier` wrote, checked before anything is drawn."""
    require_extra("eval", "del-server eval-frontier-compare")
    from .frontier_compare import load

    try:
        load(Path(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return Path(text)


def _run_frontier_compare(args: argparse.Namespace) -> None:
    require_extra("eval", "del-server eval-frontier-compare")
    from .frontier_compare import BOUNDS, compare, gain_at_bound

    for name, report in compare(args.records, args.out).items():
        read_off = {bound: gain_at_bound(report, bound) for bound in BOUNDS}
        found = [
            f"{gain:+.3f} at {bound:.0%}" for bound, gain in read_off.items() if gain is not None
        ]
        nowhere = "its sweep reaches none of " + ", ".join(f"{b:.0%}" for b in BOUNDS)
        print(f"- {name}: {', '.join(found) or nowhere}")
    print(f"{args.out}/COMPARE.md written")


def _add_frontier_compare(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval-frontier-compare",
        help="several generation frontier records on one plot: does the projection move the "
        "trade-off?",
    )
    parser.add_argument(
        "records", nargs="+", type=_frontier_record, help="eval-frontier --out directories"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/frontier-compare"))
    parser.set_defaults(run=_run_frontier_compare)


def _run_audit(args: argparse.Namespace) -> None:
    require_extra("eval", "del-server audit")
    from ..adapter import Adapter
    from ..errors import InputError
    from .audit import failing, render, run

    if args.render_only:
        stored = args.out / "audit.json"
        render(_stored_report(stored, "audit", "no audit to redraw"), args.out)
        print(f"{args.out}/AUDIT.md and audit.png redrawn from {stored}")
        return
    classifies = Adapter.load(args.adapter).task is not None
    config = AuditConfig(
        model=args.model or (DEFAULT_NLU_MODEL if classifies else DEFAULT_MODEL),
        data=args.data or (DEFAULT_NLU_DATA if classifies else DEFAULT_DATA),
        adapter=args.adapter,
        out=args.out,
        prompts=args.prompts,
        skip=args.skip,
        particles=args.particles,
        trigram_keep=args.trigram_keep,
        prefix_steps=args.prefix_steps,
        attacks=args.attacks,
        levels=args.levels,
        mus=args.mu,
        seed=args.seed,
        threads=args.threads,
        jobs=args.jobs,
        reuse=args.reuse,
        command=reproducible_command(),
    )
    try:
        report = run(config)
    except InputError as error:  # the audit's own refusals, and what --data lacks
        _refuse("audit", str(error))
    for entry in report["audited"]:
        label = f"{percent(entry['target'])} level" if entry["target"] is not None else "candidate"
        verdict = {True: "holds", False: "FAILS", None: ""}[entry["holds"]]
        earlier = " (an earlier audit's)" if entry["mu"] in report["reused_mu"] else ""
        print(
            f"- {label} μ = {entry['mu']:.4g}: {entry['strongest_attack']} {entry['rate']:.2%} "
            f"(95 % up to {entry['high']:.2%}) {verdict}{earlier}"
        )
    if args.reuse and not report["reused_mu"]:
        print(
            f"del-server audit: --reuse: no row of {args.out}/audit.json applied (none there, or "
            "another attacker, prompts, projection or μ): every level was attacked",
            file=sys.stderr,
        )
    print(f"{args.out}/AUDIT.md written in {report['seconds'] / 60:.1f} min")
    if failing(report):
        raise SystemExit(1)


def _attack_names(text: str) -> tuple[str, ...]:
    from del_client.manifest import ATTACKS_IN_WORDS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ATTACKS_IN_WORDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown attacks {unknown or [text]}: choose among {', '.join(ATTACKS_IN_WORDS)}"
        )
    return names


def _add_audit(sub: argparse._SubParsersAction) -> None:
    defaults = AuditConfig(model="", data="", adapter=Path(), out=Path())
    parser = sub.add_parser(
        "audit",
        help="an adapter's levels against a stronger attacker on held-out prompts the "
        "calibration never saw: does each level still hold? (exit status 1 where one fails)",
    )
    parser.add_argument(
        "--adapter",
        type=_trained_adapter,
        default=Path(DEFAULT_ADAPTER),
        help="trained adapter (a generation or a classification one)",
    )
    parser.add_argument(
        "--model",
        help=f"path or hub id (default: {DEFAULT_MODEL}, or a classification adapter's "
        f"{DEFAULT_NLU_MODEL})",
    )
    parser.add_argument(
        "--data",
        help=f"the text the adapter was trained on (default: {DEFAULT_DATA}, or a "
        f"classification adapter's {DEFAULT_NLU_DATA}, the folder of its train.tsv)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports/audit"),
        help="where audit.json, AUDIT.md and audit.png go",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="attack nothing: redraw AUDIT.md and audit.png from OUT/audit.json",
    )
    parser.add_argument(
        "--prompts",
        type=argtypes.positive_int,
        default=defaults.prompts,
        help="held-out prompts attacked per level (a causal LM's 32-token prompts; an "
        "encoder's windows as long as its calibration's)",
    )
    parser.add_argument(
        "--skip",
        type=argtypes.count,
        help="held-out prompts passed over first (default: as many as the levels were "
        "calibrated on, so that the audit's are fresh)",
    )
    parser.add_argument(
        "--particles",
        type=argtypes.positive_int,
        default=defaults.particles,
        help="particles per prompt of the LLM particle attacks (the calibration's: 256)",
    )
    parser.add_argument(
        "--trigram-keep",
        type=argtypes.positive_int,
        default=defaults.trigram_keep,
        help="candidates per position of the trigram attack (the calibration's: 128)",
    )
    parser.add_argument(
        "--prefix-steps",
        type=argtypes.positive_int,
        default=defaults.prefix_steps,
        help="training steps of the particle attacks' mid-text prefix",
    )
    parser.add_argument(
        "--attacks",
        type=_attack_names,
        default=DEFAULT_AUDIT_ATTACKS,
        help=f"comma-separated (default {','.join(DEFAULT_AUDIT_ATTACKS)}; a classification "
        "adapter's encoder has no causal LM, so its audit runs those without one)",
    )
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--levels",
        type=argtypes.rates,
        default=(),
        help="comma-separated targets of the levels to audit, e.g. 0.2 (default: every level)",
    )
    chosen.add_argument(
        "--mu",
        type=argtypes.positive_floats,
        default=(),
        help="comma-separated candidate μ to audit instead of the levels",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the noise draw")
    parser.add_argument(
        "--threads",
        type=argtypes.positive_int,
        default=defaults.threads,
        help="torch threads a process",
    )
    parser.add_argument(
        "--jobs",
        type=argtypes.positive_int,
        default=defaults.jobs,
        help="levels attacked at once, each in its own process (the tiny default model gains "
        "more from processes than from threads)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the rows of OUT/audit.json that the same attacker measured on the same "
        "prompts through the same projection at the same μ; attack only the rest (after "
        "`train recalibrate --keep-other-levels`, only the recalibrated level)",
    )
    parser.set_defaults(run=_run_audit)


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_nlu(sub)
    _add_frontier(sub)
    _add_frontier_nlu(sub)
    _add_frontier_compare(sub)
    _add_audit(sub)
    parser = sub.add_parser(
        "eval", help="privacy, utility, communication and speed report with plots"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small samples, under 5 minutes")
    size.add_argument("--smoke", action="store_true", help="tiny samples: checks the pipeline")
    size.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: redraw EVAL.md, findings and figures from OUT/eval.json",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse what a stopped run with the same options finished (OUT/checkpoints)",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="path or hub id")
    parser.add_argument(
        "--adapter",
        type=_trained_adapter,
        default=Path(DEFAULT_ADAPTER),
        help="trained adapter directory",
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help="the text the adapter was trained on")
    parser.add_argument(
        "--ood-data",
        type=argtypes.existing_path,
        default=DEFAULT_OOD_DATA,
        help="text of another domain, on which the levels are attacked as well",
    )
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=argtypes.positive_int,
        help="torch threads (default 1: best for the tiny default model)",
    )
    parser.add_argument(
        "--jobs",
        type=argtypes.positive_int,
        help="slow units computed at once, each in its own process: the baselines' levels, "
        "the attack rows, the methods' utility (default 1)",
    )
    parser.add_argument(
        "--soft-prompt-steps",
        type=argtypes.positive_int,
        help="steps for the baselines' soft prompts (default: as many as the adapter's)",
    )
    parser.set_defaults(run=_run)
