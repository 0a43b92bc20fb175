"""TRAINING.md of a classification adapter: how it was trained, its levels, its accuracy."""

from __future__ import annotations

from pathlib import Path

from del_client.manifest import percent

from ...paths import shown
from ..report import levels_table

# A resumed run's clock starts at the resume: the stages its checkpoints held took no time.
RESUMED = " of the resumed run (stages found in its checkpoints not counted)"


def write_markdown(path: Path, report: dict) -> None:
    e, cfg, data = report["evaluation"], report["config"], report["data"]
    losses = report["losses"]
    lines = [
        f"# Training report: {report['model_id']} for {Path(cfg['data']).name}",
        "",
        f"Reproduce with: `{cfg['command'] or 'del-server train classify'}`",
        "",
        f"- data: `{shown(data['source'])}`: {data['train_sentences']} training sentences and "
        f"{data['held_out_sentences']} held out for model selection (all of train.tsv the "
        f"attacker's language), {data['dev_sentences']} dev sentences (the levels calibrated "
        f"on their tokens, the accuracy measured on them); labels {', '.join(data['labels'])}",
        f"- projection: k = {cfg['dim']}, b = {cfg['bits']} bits, clip 1; W_p trained "
        f"{losses.get('projection', {}).get('steps', 0)} steps from PCA with a head over the "
        f"symbols' moments (batch {cfg['projection_batch']}, learning rate "
        f"{cfg['projection_lr']:g}), at the noise of μ = {cfg['projection_mu']:g}; then W_d, a "
        f"soft prompt of {cfg['soft_prompt_length']} vectors and the head through the encoder, "
        f"{losses.get('front_end', {}).get('steps', 0)} steps (batch {cfg['batch']}, learning "
        f"rate {cfg['lr']:g}); seed {cfg['seed']}",
        f"- levels: each level's soft prompt and head fine-tuned {cfg['level_steps']} steps at "
        "its own noise; a clean head for raw embeddings",
        "- every stage ends on the parameters of its lowest held-out loss (checked every "
        f"{cfg['check_every']} steps): {_chosen(report['selection'])}",
        f"- wall time{RESUMED if cfg['resume'] else ''}: "
        f"{report['timings']['total_s']:.0f} s on {report['machine']['platform']} "
        f"({report['machine']['threads']} torch thread(s))",
        "",
        "## Levels",
        "",
        *levels_table(report["levels"]),
        "",
        "## Dev accuracy",
        "",
        f"{e['dev_sentences']} dev sentences; each level's figure is the mean over "
        f"{len(cfg['eval_seeds'])} draws of the noise. Majority class: {e['majority']:.1%}; "
        f"clean (raw embeddings, no privacy): {e['clean']:.1%}.",
        "",
        "| target | μ per token | dev accuracy | strongest attack's 95 % bound |",
        "|---:|---:|---:|---:|",
        *(
            f"| {percent(level['target_attack_rate'])} | {level['mu']:.3f} | {level['accuracy']:.1%} "
            f"| {level['strongest_rate_high']:.2%} |"
            for level in e["levels"]
        ),
        "",
    ]
    path.write_text("\n".join(lines))


def _chosen(selection: dict[str, dict]) -> str:
    return ", ".join(
        f"{name} step {chosen['chosen_step']} (loss {chosen['held_out_score']:.3f})"
        for name, chosen in selection.items()
    )
