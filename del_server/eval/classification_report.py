"""EVAL.md and the accuracy-against-attack plot of `del-server eval-nlu`."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from del_client.manifest import percent

from ..attacks.suite import ATTACKS_IN_WORDS
from ..paths import shown

SERIES = {  # method -> marker and line style on the plot
    "del + soft prompt": ("o", "-"),
    "del": ("o", ":"),
    "gaussian + soft prompt": ("s", "-"),
    "gaussian": ("s", ":"),
}
REFERENCES = ("clean", "projected", "majority")


def render(report: dict, out: Path) -> None:
    _plot(report, out / "accuracy_vs_attack.png")
    (out / "EVAL.md").write_text(_markdown(report))


def _plot(report: dict, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    rows = report["rows"]
    for method, (marker, style) in SERIES.items():
        points = sorted(
            (r["attack_rate_high"], r["accuracy"]) for r in rows if r["method"] == method
        )
        if points:
            axis.plot(*zip(*points, strict=True), marker=marker, linestyle=style, label=method)
    for row in rows:
        if row["method"] in REFERENCES:
            axis.axhline(row["accuracy"], color="grey", linewidth=0.8, linestyle="--")
            axis.annotate(row["method"], (0.0, row["accuracy"]), fontsize=8, va="bottom")
    axis.axvline(report["prior_alone_rate"], color="red", linewidth=0.8, linestyle=":")
    axis.set(
        xlabel="strongest attack's token recovery (95 % upper bound)",
        ylabel="dev accuracy",
        title=f"{report['model_id']} on {Path(report['data']['source']).name}: accuracy vs attack",
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _markdown(report: dict) -> str:
    data, rows = report["data"], report["rows"]
    lines = [
        f"# Private classification: {report['model_id']} on {Path(data['source']).name}",
        "",
        f"Reproduce with: `{report['command'] or 'del-server eval-nlu'}` "
        f"({report['seconds'] / 60:.0f} minutes). Adapter: `{shown(report['adapter'])}`.",
        "",
        f"Dev accuracy on {data['dev_sentences']} dev sentences (never trained on); noisy "
        "figures are the mean over noise draws. Attack rates: token recovery of the strongest "
        "attack on dev sentences (their tokens), with the upper end of its 95 % interval "
        "(clustered by prompt), at the level's μ; ε exact per token at δ = 1e-5. Every "
        "baseline had a head (and where marked a soft prompt) trained by the same loop for "
        "the same number of steps. Knowing only the language, the best blind guess recovers "
        f"{report['prior_alone_rate']:.1%} of tokens.",
        "",
        "| method | target | μ | ε per token | strongest attack | its rate (95 % bound) "
        "| bits per token | dev accuracy |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        if "mu" in row:
            privacy = (
                f"| {percent(row['target_attack_rate'])} | {row['mu']:.3g} | {row['epsilon_token']:.3g} "
                f"| {ATTACKS_IN_WORDS[row['strongest_attack']]} "
                f"| {row['attack_rate']:.1%} ({row['attack_rate_high']:.2%}) "
            )
        else:
            privacy = "| — | — | — | — | — "
        lines.append(
            f"| {row['method']} {privacy}| {row['bits_per_token']} | {row['accuracy']:.1%} |"
        )
    lines += [
        "",
        f"Raw fp16 embeddings would take {report['raw_bits_per_token']} bits per token.",
        "",
        "![accuracy against attack](accuracy_vs_attack.png)",
        "",
    ]
    return "\n".join(lines)
