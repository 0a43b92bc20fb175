"""The privacy–utility frontier of generation (`make frontier` -> docs/eval/frontier/).

Over a sweep of μ with the adapter's projection: the strongest attack's token recovery on
held-out prompts, and the held-out continuation loss of a soft prompt trained at that μ with
each front-end (front_end.py: W_d·x̂, the posterior), beside sending nothing (a soft prompt
trained the same way for that case) and the clean prompt; and the posterior mixture: the
continuation's loss under the LLM's posterior predictive given the symbols (particle.py: the
prompt decoded by the particle sampler, the LLM continuing each particle after the
nothing-sent soft prompt, weighted), what a server that decodes as the strongest attacker
does, for the user, would reach. Where a curve drops below nothing sent is where a private
prompt starts to pay, and the attack rate there is its price.

The attacks are calibration's bisection set (nearest neighbour, per-token likelihood, the
bigram forward-backward marginals) and the LLM particle filter and smoother, the strongest
at the levels the adapters record; the slow beam and learned attacks are left to the levels'
own calibration.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from tqdm import tqdm

from del_client.parameters import DEFAULT_BITS

from ..adapter import Adapter
from ..attacks.mechanisms import Binomial
from ..attacks.suite import strongest
from ..front_end import PosteriorFrontEnd, initial_parameters
from ..paths import recorded, shown
from ..train.calibrate import BISECTION_ATTACKS
from ..train.evaluate import level_losses, reference_losses
from ..train.pipeline import TrainConfig, Workbench
from ..train.reader import mixture_nlls, per_token
from ..train.soft_prompt import level_prompt, nothing_sent
from .config import FrontierConfig

FRONT_ENDS = ("linear", "posterior")  # each with a soft prompt trained per μ
KINDS = (*FRONT_ENDS, "mixture")
ATTACKS = (*BISECTION_ATTACKS, "trigram_marginal", "lm_filter", "lm_smoother")
STYLE = {  # kind -> (label, colour, marker)
    "linear": ("W_d·x̂ + soft prompt (the paper's)", "C0", "o"),
    "posterior": ("posterior front-end + soft prompt", "C2", "^"),
    "mixture": ("posterior mixture (LLM particles)", "C4", "s"),
}


def run(config: FrontierConfig) -> dict:
    """Measure every point of the sweep; writes frontier.json, FRONTIER.md, frontier.png."""
    started = time.perf_counter()
    adapter = Adapter.load(config.adapter)
    # The quantizer the projection was trained for, unless the sweep asks for another.
    config = replace(config, bits=config.bits or adapter.metadata.get("bits", DEFAULT_BITS))
    bench = Workbench.open(
        TrainConfig(
            model=config.model,
            data=config.data,
            out=config.out,
            bits=config.bits,
            soft_prompt_length=config.length,
            soft_prompt_steps=config.steps,
            eval_windows=config.eval_windows,
            seed=config.seed,
            particles=config.particles,
            prefix_steps=config.prefix_steps,
        )
    )
    # Text too short for the sweep is refused before anything trains.
    remedy = "use more text (--data) or ask for fewer"
    held_out = bench.split.validation
    validation = held_out.first(config.eval_windows, asked_by="--eval-windows", remedy=remedy)
    attacked = held_out.first(config.attack_prompts, asked_by="--attack-prompts", remedy=remedy)
    prompts = attacked.prompts.numpy()
    attacker = bench.attacker()
    adapter = adapter if adapter.prior is not None else replace(adapter, prior=attacker.prior)
    front_end = PosteriorFrontEnd.of(adapter, bench.lm.table)
    training = {"length": config.length, "steps": config.steps}
    nothing = bench.soft_prompt("nothing_sent", nothing_sent, desc="nothing sent", **training)
    references = reference_losses(bench.lm, adapter, validation, nothing)
    points = []
    for mu in tqdm(config.mus, desc="frontier"):
        spec = bench.spec(adapter, mu)
        mechanism = Binomial(spec)
        rates = attacker.attack(adapter, mechanism, prompts, seed=config.seed, attacks=ATTACKS)
        name, worst = strongest(rates)
        point = {"mu": mu, "strongest_attack": name, **worst.to_dict()}
        for kind in FRONT_ENDS:
            reader = front_end if kind == "posterior" else None
            parameters = initial_parameters(bench.lm.table) if reader else None
            path = level_prompt(bench.lm, adapter, spec, reader, parameters)
            soft = bench.soft_prompt(
                f"{kind}_mu{mu:g}",
                path,
                desc=f"{kind} μ={mu:g}",
                path_parameters=parameters,
                **training,
            )
            losses = level_losses(bench.lm, path, validation, soft, (config.seed,))
            point[kind] = losses["noisy_soft_prompt"]["mean"]
        mixture = mixture_nlls(
            bench.lm,
            front_end,
            mechanism,
            validation,
            nothing,
            particles=config.particles,
            seed=config.seed,
        )
        point["mixture"] = per_token(mixture, validation)
        points.append(point)
    report = {
        "config": recorded(config),
        "projection": {
            "dim": adapter.projection_dim,
            "noise_mu": adapter.metadata.get("projection_noise_mu"),
            "steps": adapter.metadata.get("projection_steps"),
        },
        "references": references,
        "attacks": ATTACKS,
        "points": points,
        "seconds": time.perf_counter() - started,
    }
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "frontier.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, config.out / "frontier.png")
    (config.out / "FRONTIER.md").write_text(markdown(report))
    return report


def crossover(report: dict, kind: str) -> dict | None:
    """The most private point of the sweep at which `kind` beats sending nothing."""
    nothing = report["references"]["nothing_sent_soft_prompt"]
    better = [p for p in report["points"] if p[kind] < nothing]
    return min(better, key=lambda p: p["mu"]) if better else None


def plot(report: dict, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    points = sorted(report["points"], key=lambda p: p["rate"])
    rates = [100 * p["rate"] for p in points]
    for kind in KINDS:
        label, colour, marker = STYLE[kind]
        axes.plot(rates, [p[kind] for p in points], marker=marker, color=colour, label=label)
    for p in points:
        axes.annotate(
            f"μ={p['mu']:g}",
            (100 * p["rate"], p["mixture"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, -10),
        )
    refs = report["references"]
    axes.axhline(
        refs["nothing_sent_soft_prompt"], color="C3", ls="-.", label="nothing sent + soft prompt"
    )
    axes.axhline(refs["clean"], color="k", ls=":", label="clean prompt (no privacy)")
    axes.set_xlabel("strongest attack's token recovery (%)")
    axes.set_ylabel("held-out continuation loss (nats/token)")
    c = report["config"]
    axes.set_title(
        f"Generation frontier: {Path(c['model']).name}, {c['eval_windows']} held-out windows, "
        f"{c['steps']} steps",
        fontsize=9,
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def projection_of(report: dict, *, adapter: bool = True) -> str:
    """The swept projection: its shape and training where the record has them, and (unless
    `adapter` is False and the shape is known) the adapter it came from."""
    c, shape = report["config"], report.get("projection")
    source = f"`{shown(c['adapter'])}`"
    if shape is None:
        return f"{source}, b = {c['bits']}"
    noise = shape.get("noise_mu")
    trained = f", trained with the mechanism's noise at μ = {noise:.3g}" if noise else ""
    described = f"k = {shape['dim']}, b = {c['bits']}{trained}"
    return f"{described} ({source})" if adapter else described


def markdown(report: dict) -> str:
    refs, c = report["references"], report["config"]
    nothing = refs["nothing_sent_soft_prompt"]
    rows = [
        f"| {p['mu']:g} | {p['rate']:.1%} ({p['high']:.2%}) {p['strongest_attack']} | "
        f"{p['mixture']:.3f} | {p['posterior']:.3f} | {p['linear']:.3f} | "
        f"{p['mixture'] - nothing:+.3f} |"
        for p in sorted(report["points"], key=lambda p: p["mu"])
    ]
    lines = [
        f"# Generation frontier: {Path(c['model']).name}",
        "",
        f"Reproduce with: `{c['command'] or 'make frontier'}` ({report['seconds'] / 60:.0f} min).",
        "",
        f"Projection: {projection_of(report)}; per μ, a soft prompt of "
        f"{c['length']} vectors trained {c['steps']} steps with each front-end; the posterior "
        f"mixture with {c['particles']} particles after the nothing-sent soft prompt; held-out "
        f"continuation loss on {c['eval_windows']} windows (one noise seed); the strongest of "
        f"{', '.join(report['attacks'])} on {c['attack_prompts']} held-out prompts.",
        "",
        f"- clean prompt: **{refs['clean']:.3f}** nats/token",
        f"- nothing sent, with a soft prompt trained the same way: **{nothing:.3f}**",
        "",
        "| μ per token | strongest attack (95 % high) | posterior mixture | posterior front-end | W_d·x̂ | mixture − nothing sent |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    for kind in KINDS:
        point = crossover(report, kind)
        lines.append(
            f"- {STYLE[kind][0]}: "
            + (
                f"first beats nothing sent at μ = {point['mu']:g}, where the strongest attack "
                f"recovers {point['rate']:.1%} of tokens"
                if point
                else "never beats nothing sent in this sweep"
            )
        )
    return "\n".join([*lines, "", "![frontier](frontier.png)", ""])
