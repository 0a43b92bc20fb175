"""What the numbers say, in sentences the report prints as they come out, good or bad.

Comparisons are DEL with its soft prompt against each alternative at the same calibrated
level (same target attack success rate): coherence paired over the held-out windows, loss
with the seeds' intervals. The verdicts are mechanical ("higher", "lower",
"indistinguishable" at 95 %), so the report cannot round a loss into a win.
"""

from __future__ import annotations

import math

from .utility import Measured, paired_difference

RIVALS = ("del", "gaussian+soft", "gaussian", "del_full+soft", "del_full")
REFERENCES = ("no_prompt+soft", "no_prompt")


def _level_key(family: str, target: float) -> str:
    return f"{family}@{target:g}"


def _loss_difference(a: dict, b: dict) -> dict:
    """a − b of mean losses; lower is better, so "lower" is the good verdict here."""
    diff = a["mean"] - b["mean"]
    half = math.hypot(a["ci95"], b["ci95"])
    verdict = "lower" if diff + half < 0 else "higher" if diff - half > 0 else "indistinguishable"
    return {"mean": diff, "ci95": half, "verdict": verdict}


def comparisons(measured: list[Measured], targets: list[float]) -> list[dict]:
    by_key = {m.method.key: m for m in measured}
    rows = []
    for target in targets:
        ours = by_key.get(_level_key("del+soft", target))
        if ours is None:
            continue
        others = [_level_key(f, target) for f in RIVALS] + list(REFERENCES)
        for key in others:
            if key not in by_key:
                continue
            other = by_key[key]
            rows.append(
                {
                    "target_attack_rate": target,
                    "method": ours.method.key,
                    "against": key,
                    "against_label": other.method.label,
                    "coherence_difference": paired_difference(
                        ours.coherence_windows, other.coherence_windows
                    ),
                    "loss_difference": _loss_difference(ours.loss, other.loss),
                }
            )
    return rows


def _find(rows: list[dict], target: float, against: str) -> dict | None:
    key = against if against in REFERENCES else _level_key(against, target)
    return next(
        (r for r in rows if r["target_attack_rate"] == target and r["against"] == key), None
    )


def _phrase(row: dict) -> str:
    c, loss = row["coherence_difference"], row["loss_difference"]
    return (
        f"coherence {c['mean']:+.3f} ± {c['ci95']:.3f} ({c['verdict']}), "
        f"loss {loss['mean']:+.3f} ± {loss['ci95']:.3f} nats/token ({loss['verdict']})"
    )


def _better_worse(row: dict) -> tuple[list[str], list[str]]:
    """Which metrics DEL + soft prompt wins and loses on against this row's alternative."""
    coherence, loss = row["coherence_difference"]["verdict"], row["loss_difference"]["verdict"]
    better = [
        n for n, ok in (("coherence", coherence == "higher"), ("loss", loss == "lower")) if ok
    ]
    worse = [
        n for n, bad in (("coherence", coherence == "lower"), ("loss", loss == "higher")) if bad
    ]
    return better, worse


def _information_verdict(row: dict) -> str:
    """Does the private prompt beat sending nothing? Both metrics, said plainly."""
    better, worse = _better_worse(row)
    if not better:
        return (
            "this level carries NO useful information: sending no prompt at all does as well "
            f"{'or better ' if worse else ''}(perfect privacy, no communication)."
        )
    if worse:
        return (
            f"mixed: the private prompt helps {' and '.join(better)} but is WORSE in "
            f"{' and '.join(worse)} than sending no prompt at all."
        )
    return f"the private prompt carries useful information ({' and '.join(better)} better)."


def _count(rows: list[dict], targets: list[float], against: str, metric: str, verdict: str) -> list:
    found = [_find(rows, t, against) for t in targets]
    return [t for t, r in zip(targets, found, strict=True) if r and r[metric]["verdict"] == verdict]


def _levels(targets: list[float]) -> str:
    return ", ".join(f"{t:.0%}" for t in targets) or "none"


def summary_findings(report: dict) -> list[str]:
    """The few sentences to read first, derived from the same verdicts as the rest."""
    rows, levels = report["comparisons"], report["setup"]["adapter"]["levels"]
    targets = [level["target_attack_rate"] for level in levels]
    n, lines = len(targets), []
    informative = [
        t for t in targets if (r := _find(rows, t, "no_prompt+soft")) and _better_worse(r)[0]
    ]
    if not informative:
        lines.append(
            f"No calibrated level ({_levels(targets)}) beats sending no prompt at all with a soft "
            "prompt trained for that case (perfect privacy, zero communication): on this model, "
            "at these privacy levels, the private prompt carries no useful information."
        )
    else:
        lines.append(
            f"DEL with its soft prompt beats sending no prompt at all at {len(informative)} of {n} "
            f"levels ({_levels(informative)})."
        )
    lower = _count(rows, targets, "del", "loss_difference", "lower")
    higher = _count(rows, targets, "del", "coherence_difference", "higher")
    lines.append(
        f"The soft prompt lowers the loss under DEL's noise at {len(lower)} of {n} levels and "
        f"raises coherence at {len(higher)} of {n} ({_levels(higher)})."
    )
    plain = _count(rows, targets, "gaussian", "coherence_difference", "higher")
    soft_higher = _count(rows, targets, "gaussian+soft", "coherence_difference", "higher")
    soft_lower = _count(rows, targets, "gaussian+soft", "coherence_difference", "lower")
    lines.append(
        f"At matched attack success, DEL + soft prompt has higher coherence than the Gaussian "
        f"baseline without soft prompt at {len(plain)} of {n} levels, and than the Gaussian "
        f"baseline with its own soft prompt at {len(soft_higher)} of {n} (lower at "
        f"{len(soft_lower)})"
        + (
            ": the gain comes from the soft prompt, which helps the Gaussian mechanism as much or more."
            if not soft_higher
            else "."
        )
    )
    attacks = {r["method"]: r for r in report["privacy"]["rows"]}
    learned = [attacks[f"del@{t:g}"]["strongest"] for t in targets if f"del@{t:g}" in attacks]
    prior = attacks["no_prompt"]["strongest"] if "no_prompt" in attacks else None
    if learned:
        lines.append(
            f"Levels calibrated to {_levels(targets)} attack success let the strongest attack "
            f"recover {', '.join(f'{r:.1%}' for r in learned)} of held-out tokens"
            + (f" (guessing the most frequent token alone: {prior:.1%})." if prior else ".")
        )
    return lines


def utility_findings(rows: list[dict], levels: list[dict]) -> list[str]:
    """Per level: the issue's criterion (DEL + soft prompt above the same noise without it and
    above the Gaussian baseline, in coherence), then the test against sending nothing."""
    lines = []
    for level in levels:
        target = level["target_attack_rate"]
        plain, gaussian = _find(rows, target, "del"), _find(rows, target, "gaussian")
        gaussian_soft = _find(rows, target, "gaussian+soft")
        nothing = _find(rows, target, "no_prompt+soft")
        if plain is None:
            continue
        head = (
            f"{target:.0%} level (μ = {level['mu']:.3g}, ε = {level['epsilon_token']:.1f} per "
            "token): DEL + soft prompt"
        )
        text = f"{head} vs the same noise without soft prompt: {_phrase(plain)}"
        met = plain["coherence_difference"]["verdict"] == "higher"
        if gaussian is not None:
            text += f"; vs the Gaussian baseline at matched attack rate: {_phrase(gaussian)}"
            met = met and gaussian["coherence_difference"]["verdict"] == "higher"
        if gaussian_soft is not None:
            text += f"; vs the Gaussian baseline with its own soft prompt: {_phrase(gaussian_soft)}"
        criterion = "met" if met else "NOT met"
        lines.append(
            f"{text}. Higher coherence than both the plain noise and the Gaussian baseline: "
            f"**{criterion}**."
        )
        if nothing is not None:
            lines.append(
                f"{head} vs no prompt at all (with a soft prompt trained for that case): "
                f"{_phrase(nothing)}: {_information_verdict(nothing)}"
            )
    return lines


def privacy_findings(attack_rows: list[dict]) -> list[str]:
    """The likelihood attack should be at least as strong as nearest neighbour: say where it is
    not, and whether the gap is beyond sampling noise. Then where the learned attack beats
    both, since that is the number a user should read as the risk."""
    lines, learned_wins, private = [], [], [r for r in attack_rows if r["likelihood"] is not None]
    for row in private:
        n, nn, lk = row["tokens"], row["nearest_neighbour"], row["likelihood"]
        noise = 1.96 * math.sqrt(max(nn * (1 - nn), 1e-12) * 2 / n)  # of a difference of rates
        if lk < nn:
            why = (
                "within sampling noise"
                if nn - lk <= noise
                else "beyond sampling noise: with a uniform prior it is optimal only for "
                "uniformly drawn tokens, while nearest neighbour's errors can favour the "
                "frequent tokens real text is made of"
            )
            lines.append(
                f"{row['method']}: the likelihood attack ({lk:.1%}) is below nearest neighbour "
                f"({nn:.1%}) on {n} tokens, {why} (±{noise:.1%})."
            )
        if row["learned"] is not None and row["learned"] > max(nn, lk) + noise:
            learned_wins.append(f"{row['method']} {row['learned']:.1%} vs {max(nn, lk):.1%}")
    if private and not any(r["likelihood"] < r["nearest_neighbour"] for r in private):
        lines.append("The likelihood attack is at least as strong as nearest neighbour everywhere.")
    if learned_wins:
        lines.append(
            f"The learned inversion network beats both fixed attacks beyond sampling noise at "
            f"{len(learned_wins)} of {len(private)} levels ({'; '.join(learned_wins)}). It learns "
            "which tokens are frequent in in-domain text, which the uniform-prior likelihood "
            "attack ignores: a level's calibration target understates what such an attacker "
            "recovers, and the 'strongest' column is the one to read."
        )
    return lines
