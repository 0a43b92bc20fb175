"""The privacy–utility frontier of classification (`make frontier-nlu` -> docs/eval-nlu/frontier/).

Which shape of the symbols buys the most accuracy for an attack rate? Over a grid of
(k coordinates, b bits per coordinate, μ), each point trains its own projection for the task
at that noise (train classify's projection stage: W_p and a head over the decoded symbols'
moments, no encoder pass: a few minutes a point), then measures its dev accuracy (mean over
noise draws) and the strongest of calibration's bisection attacks and the trigram
forward-backward (the prior-only attack strongest at several committed levels) on windows of
dev sentences (their tokens: the text the levels are calibrated on).

The served levels add the frozen encoder, a soft prompt and per-level fine-tuning on top of
this stage; the plot sets the committed adapter's levels beside the grid, so the gap between
this stage and what is served is on record too. The slow learned attack is left to the
levels' own calibration.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

from del_client.manifest import percent

from ..adapter import Adapter
from ..attacks.mechanisms import Binomial
from ..attacks.suite import strongest
from ..paths import recorded, shown
from ..train.calibrate import BISECTION_ATTACKS
from ..train.classification.objective import binomial_noise
from ..train.classification.pipeline import (
    ClassifyBench,
    ClassifyConfig,
    accuracies,
    attacker,
    projection_stage,
)
from .config import NluFrontierConfig

TARGETS = ClassifyConfig.targets  # the committed levels' labels
ATTACKS = (*BISECTION_ATTACKS, "trigram_marginal")


def run(config: NluFrontierConfig) -> dict:
    """Measure every point; writes frontier.json, FRONTIER.md and frontier.png."""
    started = time.perf_counter()
    base = ClassifyConfig(
        model=config.model,
        data=config.data,
        out=config.out,
        projection_steps=config.projection_steps,
        eval_seeds=config.eval_seeds,
        seed=config.seed,
    )
    bench = ClassifyBench.open(base)
    server = attacker(bench)
    prompts = bench.data.dev.windows(
        config.attack_prompts, base.calibration_length, asked_by="--attack-prompts"
    )
    points = []
    for k, b, mu in tqdm(config.points, desc="frontier"):
        point_config = replace(
            base,
            dim=k,
            bits=b,
            projection_mu=mu,
            out=config.out / "checkpoints" / f"k{k}b{b}mu{mu:g}",
        )
        (point_config.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        at_point = replace(bench, config=point_config, timings={}, losses={}, selection={})
        adapter = projection_stage(at_point)
        runs = accuracies(
            at_point,
            adapter,
            adapter.task.heads[mu],
            binomial_noise(at_point.spec(adapter, mu)),
            encoder=False,
        )
        mechanism = Binomial.at(mu=mu, dim=k, bits=b, clip=adapter.clip)
        rates = server.attack(adapter, mechanism, prompts, seed=config.seed, attacks=ATTACKS)
        name, worst = strongest(rates)
        points.append(
            {
                "k": k,
                "bits": b,
                "mu": mu,
                "bits_per_token": k * b,
                "accuracy": float(np.mean(runs)),
                "accuracy_runs": runs,
                "strongest_attack": name,
                **worst.to_dict(),
            }
        )
    dev = bench.data.dev
    blind_name, blind = strongest(server.prior_alone(prompts))
    report = {
        "config": recorded(config),
        "dev_sentences": len(dev),
        "majority": dev.majority,
        "attacks": list(ATTACKS),
        "blind": {"attack": blind_name, **blind.to_dict()},
        "served": served_levels(config.adapter),
        "served_from": {"adapter": shown(config.adapter), "command": config.command},
        "points": points,
        "seconds": time.perf_counter() - started,
    }
    write(report, config.out)
    return report


def refresh_served(report: dict, adapter_dir: Path, out: Path, command: str) -> dict:
    """An earlier grid (OUT/frontier.json) with `adapter_dir`'s levels as served beside it,
    redrawn. The grid trains its own projections and never reads the adapter, so a retrained
    adapter needs this, not a rerun of the grid."""
    report = {
        **report,
        "served": served_levels(adapter_dir),
        "served_from": {"adapter": shown(adapter_dir), "command": command},
    }
    write(report, out)
    return report


def write(report: dict, out: Path) -> None:
    """frontier.json, frontier.png and FRONTIER.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "frontier.png")
    (out / "FRONTIER.md").write_text(markdown(report))


def served_levels(adapter_dir: Path) -> list[dict]:
    """The adapter's levels as served (encoder, soft prompt, head) with their recorded
    accuracy and strongest attack."""
    adapter = Adapter.load(adapter_dir)
    return [
        {
            "target": level.target_attack_rate,
            "mu": level.mu,
            "k": adapter.projection_dim,
            "bits": level.bits,
            "accuracy": level.utility.value,
            "rate": level.strongest.rate,
            "high": level.strongest.high,
        }
        for level in adapter.calibration
        if level.utility is not None
    ]


def best_under(report: dict, target: float) -> dict | None:
    """The most accurate point whose strongest attack's 95 % bound stays under `target`."""
    held = [p for p in report["points"] if p["high"] < target]
    return max(held, key=lambda p: p["accuracy"]) if held else None


def plot(report: dict, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for bits in sorted({p["bits"] for p in report["points"]}):
        points = [p for p in report["points"] if p["bits"] == bits]
        axes.scatter(
            [100 * p["high"] for p in points],
            [100 * p["accuracy"] for p in points],
            label=f"b = {bits}",
        )
        for p in points:
            axes.annotate(
                f"k={p['k']} μ={p['mu']:g}",
                (100 * p["high"], 100 * p["accuracy"]),
                fontsize=6,
                textcoords="offset points",
                xytext=(3, 3),
            )
    served = report["served"]
    if served:
        axes.scatter(
            [100 * s["high"] for s in served],
            [100 * s["accuracy"] for s in served],
            marker="*",
            s=160,
            color="k",
            label="committed adapter's levels (as served)",
        )
    for target in TARGETS:
        axes.axvline(100 * target, color="grey", ls=":", lw=1)
    axes.axvline(
        100 * report["blind"]["high"],
        color="C7",
        ls="--",
        lw=1,
        label="language alone (no symbols)",
    )
    axes.axhline(100 * report["majority"], color="C3", ls="-.", label="majority (nothing sent)")
    axes.set_xlabel("strongest attack's token recovery, 95 % bound (%)")
    axes.set_ylabel("dev accuracy (%)")
    axes.set_title(
        f"Classification frontier: {Path(report['config']['model']).name}, "
        f"projection stage (moments head), {report['dev_sentences']} dev sentences",
        fontsize=9,
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown(report: dict) -> str:
    c = report["config"]
    rows = [
        f"| {p['k']} | {p['bits']} | {p['mu']:g} | {p['bits_per_token']} | "
        f"{p['rate']:.1%} ({p['high']:.2%}) | {p['accuracy']:.1%} |"
        for p in sorted(report["points"], key=lambda p: p["high"])
    ]
    served = [
        f"| {percent(s['target'])} | {s['k']} | {s['bits']} | {s['mu']:.3g} | "
        f"{s['rate']:.1%} ({s['high']:.2%}) | {s['accuracy']:.1%} |"
        for s in report["served"]
    ]
    lines = [
        f"# Classification frontier: {Path(c['model']).name} on {Path(c['data']).name}",
        "",
        f"Reproduce with: `{c['command'] or 'make frontier-nlu'}` "
        f"({report['seconds'] / 60:.0f} min).",
        "",
        f"Each point trains its own projection for the task at its noise ({c['projection_steps']} "
        "steps of train classify's projection stage: a head over the decoded symbols' moments, "
        f"no encoder pass). Dev accuracy on {report['dev_sentences']} dev sentences, mean of "
        f"{len(c['eval_seeds'])} noise draws (one standard error near 75 %: "
        f"{math.sqrt(0.75 * 0.25 / report['dev_sentences']):.1%}); the strongest "
        f"of {', '.join(report['attacks'])} on {c['attack_prompts']} windows of dev sentences, with the "
        f"upper end of its 95 % interval. Majority label: {report['majority']:.1%}. "
        f"Knowing only the language (no symbols), {report['blind']['attack']} recovers "
        f"{report['blind']['rate']:.1%} (up to {report['blind']['high']:.2%}): no point can go "
        "below it.",
        "",
        "| k | b | μ per token | bits per token | strongest attack (95 % high) | dev accuracy |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    for target in TARGETS:
        best = best_under(report, target)
        lines.append(
            f"- best under {percent(target)}: "
            + (
                f"k = {best['k']}, b = {best['bits']}, μ = {best['mu']:g}: "
                f"{best['accuracy']:.1%} at {best['high']:.2%}"
                if best
                else "no point of the grid"
            )
        )
    if served:
        source = report.get("served_from", {"adapter": c["adapter"], "command": c["command"]})
        refreshed = (
            f" Set beside the grid later, from the adapter as it now is: `{source['command']}`."
            if source["command"] != c["command"]
            else ""
        )
        lines += [
            "",
            f"The committed adapter's levels as served (`{Path(source['adapter']).name}`: "
            "encoder, soft prompt, per-level head; their attacks include the learned inversion "
            f"network).{refreshed}",
            "",
            "| level | k | b | μ | strongest attack (95 % high) | dev accuracy |",
            "|---:|---:|---:|---:|---:|---:|",
            *served,
        ]
    return "\n".join([*lines, "", "![frontier](frontier.png)", ""])
