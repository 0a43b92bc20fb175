"""The report's figures, drawn from eval.json alone (so they can be redrawn from it).

    utility_vs_attack.png   coherence and loss against the strongest attack's recovery rate
    utility_vs_epsilon.png  the same against the exact ε per token
    attacks_vs_epsilon.png  every attack's recovery rate against ε, per mechanism, above the
                            rate of the best guess without symbols
    bits_per_token.png      bits per token per method, log scale, this model and a 7B model
    latency.png             time to first token and inter-token latency through gRPC

Every figure's title states its sample size and seeds.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from .privacy import attacks_run, in_words

CURVES = {  # (family, what the server adds) -> style
    ("del", "reader"): ("DEL as served (particle reader)", "C4", "-", "D"),
    ("del", "soft"): ("DEL + soft prompt", "C0", "-", "o"),
    ("del", ""): ("DEL, no soft prompt", "C0", "--", "o"),
    ("gaussian", "soft"): ("Gaussian + soft prompt", "C1", "-", "s"),
    ("gaussian", ""): ("Gaussian, no soft prompt", "C1", "--", "s"),
    ("del_full", "soft"): ("DEL k = d + soft prompt", "C2", "-", "^"),
    ("del_full", ""): ("DEL k = d, no soft prompt", "C2", "--", "^"),
}
REFERENCES = {  # key -> style of its horizontal line
    "clean": ("clean (no privacy)", "k", ":"),
    "no_prompt+reader": ("no prompt, particle reader", "C4", "-."),
    "no_prompt+soft": ("no prompt + soft prompt", "C3", "-."),
    "no_prompt": ("no prompt", "C3", ":"),
}
ATTACK_MARKERS = ("o", "s", "^", "v", "D", "*", "P", "X", "h")  # one per attack the suite runs
DPI = 110


def _attack_by_method(report: dict) -> dict[str, dict]:
    return {row["method"]: row for row in report["privacy"]["rows"]}


def _variant(row: dict) -> str:
    return "reader" if row.get("reader") else "soft" if row["soft_prompt"] else ""


def _curves(report: dict, x_of) -> dict[tuple[str, str], list[tuple[float, dict]]]:
    """(family, variant) -> [(x, utility row)] sorted by x, for the private methods; x from
    the attack row of the method as sent (what the server adds changes nothing seen)."""
    attacks = _attack_by_method(report)
    curves: dict[tuple[str, str], list] = {}
    for row in report["utility"]["rows"]:
        curve = (row["family"], _variant(row))
        if curve not in CURVES:
            continue
        variant = f"+{curve[1]}" if curve[1] else ""
        attack = attacks[row["key"].replace(variant, "")]
        curves.setdefault(curve, []).append((x_of(attack), row))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in curves.items()}


def _utility_figure(report: dict, path: Path, x_of, xlabel: str, logx: bool) -> None:
    utility = report["utility"]
    rows = {row["key"]: row for row in utility["rows"]}
    figure, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for axis, metric, ylabel in (
        (axes[0], "coherence", "coherence (cosine of sentence embeddings)"),
        (axes[1], "loss", "continuation loss (nats/token)"),
    ):
        for curve, points in _curves(report, x_of).items():
            label, color, style, marker = CURVES[curve]
            axis.errorbar(
                [x for x, _ in points],
                [r[metric]["mean"] for _, r in points],
                yerr=[r[metric]["ci95"] for _, r in points],
                label=label,
                color=color,
                linestyle=style,
                marker=marker,
                capsize=3,
            )
        for key, (label, color, style) in REFERENCES.items():
            if key in rows:
                axis.axhline(rows[key][metric]["mean"], color=color, linestyle=style, label=label)
        axis.set(xlabel=xlabel, ylabel=ylabel)
        if logx:
            axis.set_xscale("log")
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    figure.suptitle(
        f"{utility['coherence_windows']} windows (coherence), {utility['loss_windows']} windows "
        f"(loss), noise seeds {utility['seeds']}; bars: 95 % interval over seeds; attack rates "
        f"on {report['privacy']['tokens']} held-out tokens ({report['privacy']['prompts']} "
        "prompts)",
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0.1, 1, 1))  # room for the legend below
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _attacks_figure(report: dict, path: Path) -> None:
    """Every attack's token recovery against exact ε per token, one panel per mechanism."""
    privacy = report["privacy"]
    prior = next(r for r in privacy["rows"] if r["family"] == "no_prompt")
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    families = [("del", "DEL (k projected)"), ("gaussian", "Gaussian"), ("del_full", "DEL k = d")]
    for axis, (family, title) in zip(axes, families, strict=True):
        rows = sorted(
            (r for r in privacy["rows"] if r["family"] == family), key=lambda r: r["epsilon_token"]
        )
        eps = [r["epsilon_token"] for r in rows]
        attacks = attacks_run(privacy)
        for attack, marker in zip(attacks, ATTACK_MARKERS[: len(attacks)], strict=True):
            values = [r["attacks"][attack]["rate"] for r in rows]
            axis.plot(eps, values, marker=marker, label=in_words(attack))
        axis.axhline(
            prior["strongest"],
            color="grey",
            linestyle=":",
            label=f"no symbols: {in_words(prior['strongest_attack'])}",
        )
        axis.set(title=title, xlabel=f"exact ε per token (δ = {privacy['delta']:g})")
        axis.set_xscale("log")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("share of prompt tokens recovered")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    attacker = privacy["attacker"]
    figure.suptitle(
        f"{privacy['prompts']} held-out prompts ({privacy['tokens']} tokens), noise seed "
        f"{privacy['noise_seed']}; beam width {attacker['beam_width']}; inversion network: "
        f"{attacker['inversion_network_steps']} steps, seed {attacker['inversion_network_seed']}",
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0.12, 1, 1))  # room for the legend below
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _bits_figure(report: dict, path: Path) -> None:
    comm = report["communication"]
    here, big = (
        comm["computed_bits_per_token"]["this_model"],
        comm["computed_bits_per_token"]["7b_class"],
    )
    wire = comm["wire"]
    first_level = next(k for k in wire if k.startswith("del@"))
    entropy = comm["symbol_entropy"]
    first_entropy = entropy.get(first_level, {}).get("entropy_bits_per_token")
    bars = [
        (f"raw fp32, d = {here['hidden_size']}", here["raw_fp32"]),
        (f"raw fp16, d = {here['hidden_size']}", here["raw_fp16"]),
        ("raw fp32 on the wire (gRPC, per prompt token)", wire["raw_fp32"]["wire_bits_per_prompt_token"]),
        (f"DEL k = d = {here['hidden_size']} payload", here["del_full"]),
        (f"Gaussian k = {here['projection_dim']} payload", here["gaussian"]),
        (f"DEL k = {here['projection_dim']} payload", here["del"]),
        (f"DEL on the wire ({first_level}, gRPC, per prompt token)", wire[first_level]["wire_bits_per_prompt_token"]),
    ]  # fmt: skip
    if first_entropy is not None:
        bars.append((f"DEL symbol entropy ({first_level}): coder floor", first_entropy))
    bars += [
        (f"7B raw fp32, d = {big['hidden_size']}", big["raw_fp32"]),
        (f"7B raw fp16, d = {big['hidden_size']}", big["raw_fp16"]),
        (f"7B DEL k = {big['projection_dim']} payload", big["del"]),
        ("7B DEL entropy (binomial approximation)", big["entropy_approximation_del"]),
    ]
    figure, axis = plt.subplots(figsize=(10, 5.5))
    labels, values = zip(*bars, strict=True)
    colors = ["C3" if "raw" in label else "C0" for label in labels]
    axis.barh(range(len(bars)), values, color=colors)
    axis.set_yticks(range(len(bars)), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xscale("log")
    for i, value in enumerate(values):
        axis.text(value, i, f" {value:,.0f}", va="center", fontsize=8)
    axis.set_xlabel("bits per prompt token (log scale); no prompt at all: 0 bits")
    requests = wire[first_level]["requests"]
    axis.set_title(
        f"b = {comm['bits']}; wire figures: mean of {requests} real requests per level; entropy "
        f"from {entropy.get(first_level, {}).get('tokens', 0)} held-out tokens",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _latency_figure(report: dict, path: Path) -> None:
    """Empirical distribution functions, drawn from each distribution's 101 percentiles."""
    latency = report["speed"]["latency"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    fractions = [p / 100 for p in range(101)]
    for axis, field, title in (
        (axes[0], "time_to_first_token", "time to first token"),
        (axes[1], "inter_token_latency", "inter-token latency"),
    ):
        for row in latency:
            percentiles = row[field]["percentiles_ms"]
            if percentiles:
                label = f"{row['streams']} stream{'s' if row['streams'] > 1 else ''}"
                axis.plot(percentiles, fractions, label=label)
        axis.set(title=title, xlabel="ms (log scale)", ylabel="fraction at most", xscale="log")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    counts = ", ".join(
        f"{s['streams']}: {s['requests']} requests / {s['inter_token_latency']['samples']} gaps"
        for s in latency
    )
    figure.suptitle(
        f"through gRPC, trained adapter, greedy, {report['speed']['new_tokens']} new tokens; "
        f"samples per concurrency: {counts}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def draw_all(report: dict, out: Path) -> dict[str, str]:
    """Write every figure into `out`; returns name -> file name."""
    figures = {
        "utility_vs_attack": lambda p: _utility_figure(
            report, p, lambda a: a["strongest"], "strongest attack's token recovery rate", False
        ),
        "utility_vs_epsilon": lambda p: _utility_figure(
            report,
            p,
            lambda a: a["epsilon_token"],
            f"exact ε per token (δ = {report['privacy']['delta']:g})",
            True,
        ),
        "attacks_vs_epsilon": lambda p: _attacks_figure(report, p),
        "bits_per_token": lambda p: _bits_figure(report, p),
        "latency": lambda p: _latency_figure(report, p),
    }
    names = {}
    for name, draw in figures.items():
        draw(out / f"{name}.png")
        names[name] = f"{name}.png"
    return names
