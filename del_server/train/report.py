"""The training report: TRAINING.md for people, a loss plot, beside training.json for tools."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from del_client.manifest import percent

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from ..attacks.suite import ATTACKS, ATTACKS_IN_WORDS
from ..paths import shown

FRONT_ENDS = {  # what the LLM sees of a private prompt (front_end.py), in words
    "linear": "W_d·x̂, the paper's de-projection",
    "posterior": "the posterior mean embedding under the attacker's bigram prior, gated by "
    "its confidence (parameters trained with each soft prompt)",
}


def _smooth(values: list[float], window: int = 25) -> np.ndarray:
    if len(values) < window:
        return np.asarray(values)
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_losses(
    path: Path, projection: list[float], soft_prompts: dict[float, list[float]]
) -> None:
    """The projection's and the soft prompts' training losses; without projection losses (a
    recalibration keeps the projection it did not train) the soft prompts' alone."""
    panels = 2 if projection else 1
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    axes = axes[0]
    if projection:
        axes[0].plot(_smooth(projection))
        axes[0].set(title="projection", xlabel="step")
    for mu, losses in soft_prompts.items():
        axes[-1].plot(_smooth(losses), label=f"μ = {mu:.3g}")
    axes[-1].set(title="soft prompts (noisy prompt)", xlabel="step")
    axes[-1].legend()
    axes[0].set(ylabel="continuation NLL (nats/token)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_markdown(path: Path, report: dict) -> None:
    e, cfg, data = report["evaluation"], report["config"], report["data"]
    trained = e["nothing_sent_training"]
    lines = [
        f"# Training report: {report['model_id']}",
        "",
        f"Reproduce with: `{cfg['command'] or 'del-server train all'}`",
        *(
            [f"(evaluation refreshed with `{report['evaluated_by']['command']}`)"]
            if "evaluated_by" in report
            else []
        ),
        *(
            [
                f"(levels recalibrated, the projection kept, with "
                f"`{report['recalibrated_by']['command']}`)"
            ]
            if "recalibrated_by" in report
            else []
        ),
        "",
        f"- data: `{shown(data['source'])}`, {data['documents']} documents, the last "
        f"{data['validation_documents']} held out ({data['rule']}); {data['train_windows']} training "
        f"and {data['validation_windows']} validation windows of 32 prompt + 32 continuation tokens",
        f"- projection: k = {cfg['dim']}, {report['losses'].get('projection', {}).get('steps', 0)} steps from PCA; "
        f"clip c = {report['clip']:.4g} ({report['clip_rule']})",
        f"- quantizer: b = {cfg['bits']} bits; soft prompts of {cfg['soft_prompt_length']} vectors, "
        f"{cfg['soft_prompt_steps']} steps each, batch {cfg['batch']}, seed {cfg['seed']}",
        f"- front-end: {FRONT_ENDS[cfg.get('front_end') or 'linear']}",
        f"- wall time{' of the recalibration' if 'recalibrated_by' in report else ''}: "
        f"{report['timings']['total_s']:.0f} s on {report['machine']['platform']} "
        f"({report['machine']['device']}, {report['machine']['threads']} torch thread(s))",
        *([f"- note: {report['note']}"] if "note" in report else []),
        "",
        "## Levels",
        "",
        *levels_table(report["levels"]),
    ]
    lines += [
        "",
        "## Held-out continuation loss (nats/token)",
        "",
        f"{e['windows']} validation windows; noisy figures are mean ± std over {len(e['seeds'])} noise seeds.",
        "",
        f"- clean prompt: **{e['clean']:.3f}**",
        f"- projected prompt, no noise: **{e['projected_no_noise']:.3f}**",
        f"- no prompt at all (continuation from BOS alone): **{e['no_prompt']:.3f}**",
        f"- nothing sent, with a soft prompt trained for that case ({trained['length']} vectors, "
        f"{trained['steps']} steps, as the levels'): **{e['nothing_sent_soft_prompt']:.3f}**",
        "",
        *_reader_lines(e),
        "| level | μ per token | noisy + soft prompt | noisy, no soft prompt "
        + ("| particles alone | λ | particle reader (served) " if e.get("reader") else "")
        + "| beats no prompt | beats nothing sent |",
        "|---|---:|---:|---:|" + ("---:|---:|---:|" if e.get("reader") else "") + "---|---|",
    ]
    for level in e["levels"]:
        soft, plain = level["noisy_soft_prompt"], level["noisy"]
        reader = level.get("reader")
        read = (
            f"| {reader['mixture']:.3f} | {reader['ignore_prompt']:g} "
            f"| **{reader['loss']:.3f}** (± {reader['margin']:.3f}) "
            if reader
            else ""
        )
        lines.append(
            f"| {level['id']} | {level['mu']:.3f} | {soft['mean']:.3f} ± {soft['std']:.2g} "
            f"| {plain['mean']:.3f} ± {plain['std']:.2g} {read}| {_yes(level['informative'])} "
            f"| {_yes(level['better_than_nothing'])} |"
        )
    lines += [
        "",
        "A level that does not beat sending nothing costs privacy and buys no utility: each level",
        "records its loss against the nothing-sent one (`utility` in adapter.json), the manifest",
        "publishes it, and `del-client` warns whenever such a level is used.",
        "",
        "![training losses](training_losses.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def _reader_lines(e: dict) -> list[str]:
    reader = e.get("reader")
    if reader is None:
        return []
    blind = e["nothing_sent_reader"]
    return [
        f"- nothing sent, through the particle reader (particles from the LLM's prior, "
        f"λ = {blind['ignore_prompt']:g}): **{blind['loss']:.3f}**; the better of the two is "
        f"the reference the levels must beat: **{e['nothing_sent']:.3f}**",
        "",
        f"The server reads private prompts through the particle reader: {reader['particles']} "
        "particles from each prompt's posterior under the LLM (after the nothing-sent soft "
        "prompt), one continued, drawn by weight, or with probability λ the prompt ignored; λ "
        f"fitted per level on {reader['selection_windows']} other held-out windows. Its "
        "columns are losses of the served predictive (one noise draw per window) and of the "
        "particles alone (λ = 0); the verdicts judge the served one: it beats nothing sent only "
        "by more than ± the 95 % interval of its difference from it, paired over windows.",
        "",
    ]


def _yes(verdict: bool) -> str:
    return "yes" if verdict else "**no**"


def levels_table(levels: list[dict]) -> list[str]:
    """Markdown lines: each calibrated level with every attack's rate, and the blind floor."""
    names = [a for a in ATTACKS if levels and a in levels[0]["attacks"]]
    lines = [
        f"{_measured(levels)}. A level holds when the upper end of the 95 % "
        "interval (clustered by prompt) of the STRONGEST attack's token recovery is under its "
        "target; ε is exact per token at δ = 1e-5. Rates are token recovery, point estimate.",
        "",
        "| target | μ per token | ε per token | strongest attack | its rate (95 % CI) "
        + "".join(f"| {name} " for name in names)
        + "|",
        "|---:|---:|---:|---|---:|" + "---:|" * len(names),
    ]
    for level in levels:
        attacks, name = level["attacks"], level["strongest_attack"]
        top = attacks[name]
        lines.append(
            f"| {percent(level['target_attack_rate'])} | {level['mu']:.3f} | {level['epsilon_token']:.2f} "
            f"| {ATTACKS_IN_WORDS[name]} | {top['rate']:.1%} ({top['low']:.1%}–{top['high']:.2%}) "
            + "".join(f"| {attacks[a]['rate']:.1%} " for a in names)
            + "|"
        )
    if levels:
        lines += [
            "",
            f"Knowing only the language (no symbols), the best blind guess recovers "
            f"{levels[0]['prior_alone_rate']:.1%} of tokens: no level can go below it.",
        ]
    return lines


def _measured(levels: list[dict]) -> str:
    """What measured the levels; by level where they differ (one recalibrated alone, against
    a stronger attacker, beside the others)."""
    if not levels:
        return "No levels"
    alike: dict[str, list[str]] = {}
    for level in levels:
        measured = (
            f"{level['prompts']} prompts ({level['tokens']} tokens) of {level['measured_on']}"
        )
        alike.setdefault(measured, []).append(f"{100 * level['target_attack_rate']:g}%")
    if len(alike) == 1:
        return f"Measured on {next(iter(alike))}"
    return "Measured by level: " + "; ".join(
        f"the {' and '.join(t)} level{'s' * (len(t) > 1)} on {m}" for m, t in alike.items()
    )
