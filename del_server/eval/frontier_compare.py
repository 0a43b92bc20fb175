"""Several generation frontiers (`del-server eval-frontier` records) on one pair of axes.

Each record sweeps μ for one projection; laid side by side, they answer what a single sweep
cannot: does a projection's shape (coordinates, bits, how it was trained) move the trade-off, or
only where along it a given μ lands? The gain is the posterior mixture's loss minus sending
nothing (the same reference in every record of one model and data), read off at the strongest
attack's 95 % bound, which is what a level calibrated to that target would have.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ..paths import shown
from .frontier import projection_of

# The product's target for a generation level (issue 12): a gain of 0.1 nats/token at a level
# whose strongest attack recovers at most 20 % of tokens.
TARGET_BOUND, TARGET_GAIN = 0.20, -0.1
# Bounds every record's gain is read off at: the sweeps cover different stretches of recovery.
BOUNDS = (0.10, 0.15, TARGET_BOUND)


def load(directory: Path) -> dict:
    """The frontier record in `directory`; a ValueError saying why when it cannot be compared."""
    path = Path(directory) / "frontier.json"
    if not path.is_file():
        raise ValueError(
            f"{path.parent.absolute()} holds no frontier.json: give directories that "
            "`del-server eval-frontier --out DIR` wrote"
        )
    report = json.loads(path.read_text())
    if any("mixture" not in point for point in report["points"]):
        raise ValueError(
            f"{path} predates the posterior mixture, the reader these records are compared by: "
            "sweep it again with `del-server eval-frontier`"
        )
    return report


def gains(report: dict) -> list[tuple[float, float, float, float]]:
    """(μ, recovery, 95 % bound, mixture − nothing sent) per point, by bound."""
    nothing = report["references"]["nothing_sent_soft_prompt"]
    points = sorted(report["points"], key=lambda p: p["high"])
    return [(p["mu"], p["rate"], p["high"], p["mixture"] - nothing) for p in points]


def gain_at_bound(report: dict, bound: float = TARGET_BOUND) -> float | None:
    """The gain linearly interpolated at an attack bound of `bound`; None outside the sweep."""
    curve = gains(report)
    for (_, _, low_bound, low_gain), (_, _, high_bound, high_gain) in pairwise(curve):
        if low_bound <= bound <= high_bound:
            share = (bound - low_bound) / (high_bound - low_bound)
            return low_gain + share * (high_gain - low_gain)
    return None


def markdown(named: dict[str, dict]) -> str:
    rows = []
    for name, report in named.items():
        dim = report.get("projection", {}).get("dim")
        per_token = f"{dim * report['config']['bits']}" if dim else "—"
        read_off = [gain_at_bound(report, bound) for bound in BOUNDS]
        points = "; ".join(
            f"μ {mu:g}: {rate:.1%} ({high:.1%}) → {gain:+.3f}"
            for mu, rate, high, gain in gains(report)
        )
        with_trigram = "yes" if "trigram_marginal" in report.get("attacks", ()) else "no"
        rows.append(
            f"| {name} | {projection_of(report, adapter=False)} | {per_token} | {with_trigram} | {points} | "
            + " | ".join("—" if gain is None else f"{gain:+.3f}" for gain in read_off)
            + " |"
        )
    return "\n".join(
        [
            "# Generation frontiers compared",
            "",
            "Each row is one `del-server eval-frontier` record: per μ, the strongest attack's token "
            "recovery (its 95 % bound) and the posterior mixture's held-out loss minus sending "
            "nothing (negative: the private prompt pays). The last columns read the gain off "
            "(linearly, between the sweep's points; — outside them) at a bound, what a level "
            f"calibrated to that target gets; the target is {TARGET_GAIN:+.1f} at "
            f"{TARGET_BOUND:.0%}. Records without the trigram among their attacks understate "
            "recovery.",
            "",
            "| record | projection | bits/token | trigram attack | μ: recovery (bound) → gain | "
            + " | ".join(f"gain at {bound:.0%}" for bound in BOUNDS)
            + " |",
            "|---|---|---:|---|---|" + "---:|" * len(BOUNDS),
            *rows,
            "",
            "![frontiers compared](compare.png)",
            "",
        ]
    )


def plot(named: dict[str, dict], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, report in named.items():
        curve = gains(report)
        axes.plot(
            [100 * high for _, _, high, _ in curve],
            [gain for *_, gain in curve],
            marker="o",
            label=name,
        )
    axes.axhline(0, color="k", lw=0.8)
    bottom = min(axes.get_ylim()[0], TARGET_GAIN - 0.03)
    axes.fill_between(
        [0, 100 * TARGET_BOUND],
        TARGET_GAIN,
        bottom,
        color="C2",
        alpha=0.12,
        label=f"target: {TARGET_GAIN:+.1f} at ≤ {TARGET_BOUND:.0%}",
    )
    axes.set_ylim(bottom=bottom)
    axes.set_xlabel("strongest attack's token recovery, 95 % bound (%)")
    axes.set_ylabel("loss − nothing sent (nats/token)")
    axes.set_title(
        "Generation frontiers: gain of the private prompt against the attack", fontsize=9
    )
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def compare(directories: list[Path], out: Path) -> dict[str, dict]:
    """COMPARE.md and compare.png in `out` for the records in `directories`, each named by its
    directory (by its path where two directories share a name)."""
    names = [Path(d).name for d in directories]
    if len(set(names)) < len(names):
        names = [shown(d) for d in directories]
    named = {name: load(d) for name, d in zip(names, directories, strict=True)}
    out.mkdir(parents=True, exist_ok=True)
    plot(named, out / "compare.png")
    (out / "COMPARE.md").write_text(markdown(named))
    return named
