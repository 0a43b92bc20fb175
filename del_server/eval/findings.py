"""What the numbers say, in sentences the report prints as they come out, good or bad.

Comparisons are DEL with its soft prompt, and DEL as read by the particle reader where the
adapter has one, against each alternative at the same calibrated level (same target attack
success rate): coherence and loss paired over the held-out windows. Attacks: the interval of
each attack's token recovery, clustered by prompt. The verdicts are mechanical ("higher",
"lower", "indistinguishable"; "under" or "over" a target, at 95 %), so the report cannot
round a loss into a win.
"""

from __future__ import annotations

from del_client.manifest import percent

from ..paths import shown
from .privacy import in_words
from .utility import Measured, paired_difference

RIVALS = ("del", "gaussian+soft", "gaussian", "del_full+soft", "del_full")
REFERENCES = ("no_prompt+soft", "no_prompt")
# DEL as an adapter with a particle reader serves it: against the soft prompt the reader
# replaces, and against both ways of sending nothing (the reader alone is one of them).
SERVED, SERVED_RIVALS, SERVED_REFERENCES = "del+reader", ("del+soft",), ("no_prompt+reader",)
OURS = (
    ("del+soft", RIVALS, REFERENCES),
    (SERVED, SERVED_RIVALS, SERVED_REFERENCES + REFERENCES[:1]),
)


def _level_key(family: str, target: float) -> str:
    return f"{family}@{target:g}"


def comparisons(measured: list[Measured], targets: list[float]) -> list[dict]:
    """Each of ours at each level against its alternatives, both metrics paired over windows."""
    by_key = {m.method.key: m for m in measured}
    rows = []
    for target in targets:
        for family, rivals, references in OURS:
            ours = by_key.get(_level_key(family, target))
            if ours is None:
                continue
            others = [_level_key(f, target) for f in rivals] + list(references)
            for other in (by_key[key] for key in others if key in by_key):
                rows.append(
                    {
                        "target_attack_rate": target,
                        "method": ours.method.key,
                        "against": other.method.key,
                        "against_label": other.method.label,
                        "coherence_difference": paired_difference(
                            ours.coherence_windows, other.coherence_windows
                        ),
                        "loss_difference": paired_difference(ours.loss_windows, other.loss_windows),
                    }
                )
    return rows


def _find(rows: list[dict], target: float, against: str, ours: str = "del+soft") -> dict | None:
    references = REFERENCES + SERVED_REFERENCES
    key = against if against in references else _level_key(against, target)
    method = _level_key(ours, target)
    return next(
        (
            r
            for r in rows
            if r["target_attack_rate"] == target and r["against"] == key and r["method"] == method
        ),
        None,
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
    return ", ".join(percent(t) for t in targets) or "none"


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
    served = served_summary(rows, targets)
    if served:
        lines.append(served)
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
    lines.append(_privacy_summary(report, targets))
    return lines


def _served_beats_nothing(rows: list[dict], target: float, metric: str, verdict: str) -> bool:
    """DEL as served beats both ways of sending nothing in `metric` at `target`."""
    nothing = [_find(rows, target, key, SERVED) for key in ("no_prompt+reader", "no_prompt+soft")]
    return all(r is not None and r[metric]["verdict"] == verdict for r in nothing)


def served_summary(rows: list[dict], targets: list[float]) -> str | None:
    served = [t for t in targets if _find(rows, t, "no_prompt+reader", SERVED)]
    if not served:
        return None
    lower = [t for t in served if _served_beats_nothing(rows, t, "loss_difference", "lower")]
    higher = [t for t in served if _served_beats_nothing(rows, t, "coherence_difference", "higher")]
    return (
        f"As served, read by the particle reader, DEL beats sending nothing (both the soft "
        f"prompt alone and the same reader with no symbols) in loss at {len(lower)} of "
        f"{len(served)} levels ({_levels(lower)}) and in coherence at {len(higher)} "
        f"({_levels(higher)})."
    )


def utility_findings(rows: list[dict], levels: list[dict]) -> list[str]:
    """Per level: the issue's criterion (DEL + soft prompt above the same noise without it and
    above the Gaussian baseline, in coherence), then the test against sending nothing."""
    lines = []
    for level in levels:
        target = level["target_attack_rate"]
        plain, gaussian = _find(rows, target, "del"), _find(rows, target, "gaussian")
        gaussian_soft = _find(rows, target, "gaussian+soft")
        nothing = _find(rows, target, "no_prompt+soft")
        blind = _find(rows, target, "no_prompt+reader", SERVED)
        if blind is not None:
            lines.append(_served_line(rows, target, blind))
        if plain is None:
            continue
        head = (
            f"{percent(target)} level (μ = {level['mu']:.3g}, ε = {level['epsilon_token']:.1f} per "
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


def _served_line(rows: list[dict], target: float, blind: dict) -> str:
    """DEL as served against both ways of sending nothing (and the soft prompt it replaces);
    it carries information only in what it wins against both."""
    text = (
        f"{percent(target)} level as served (read by the particle reader) vs nothing sent through "
        f"the same reader: {_phrase(blind)}"
    )
    nothing = [blind]
    for against, words in (
        ("no_prompt+soft", "the soft prompt alone"),
        ("del+soft", "DEL + soft prompt"),
    ):
        row = _find(rows, target, against, SERVED)
        if row is not None:
            text += f"; vs {words}: {_phrase(row)}"
            nothing += [row] if against == "no_prompt+soft" else []
    verdicts = [_better_worse(row) for row in nothing]
    better = [m for m in ("coherence", "loss") if all(m in b for b, _ in verdicts)]
    worse = [m for m in ("coherence", "loss") if any(m in w for _, w in verdicts)]
    if not better:
        verdict = "it carries NO useful information beyond what sending nothing gives"
    elif worse:
        verdict = f"mixed: better in {' and '.join(better)}, WORSE in {' and '.join(worse)}"
    else:
        verdict = f"the private prompt carries useful information ({' and '.join(better)} better)"
    return f"{text}. Against both ways of sending nothing: {verdict}."


def _by_method(rows: list[dict]) -> dict[str, dict]:
    return {row["method"]: row for row in rows}


def label_verdict(row: dict, target: float) -> str:
    """A level's label against what every attack recovered, by calibration's rule: "under"
    when every attack's 95 % upper bound is below the target, "over" when one attack's lower
    bound is above it, else "unresolved" (the sample cannot tell)."""
    recoveries = row["attacks"].values()
    if max(r["high"] for r in recoveries) < target:
        return "under"
    if max(r["low"] for r in recoveries) > target:
        return "over"
    return "unresolved"


VERDICT_WORDS = {
    "under": "under its target",
    "over": "OVER its target",
    "unresolved": "not resolved against its target at 95 %",
}


def _interval(row: dict) -> str:
    best = row["attacks"][row["strongest_attack"]]
    return f"{best['rate']:.1%} (95 % {best['low']:.1%}–{best['high']:.1%})"


def _strongest_phrase(row: dict) -> str:
    return f"the strongest attack, {in_words(row['strongest_attack'])}, recovers {_interval(row)}"


def _levels_under(rows: dict[str, dict], targets: list[float]) -> list[float]:
    return [t for t in targets if label_verdict(rows[_level_key("del", t)], t) == "under"]


def _privacy_summary(report: dict, targets: list[float]) -> str:
    """The strongest attack at each level, in and out of domain, against the blind floor."""
    privacy, ood = report["privacy"], report["out_of_domain"]
    inside, outside = _by_method(privacy["rows"]), _by_method(ood["rows"])
    present = [t for t in targets if _level_key("del", t) in inside.keys() & outside.keys()]

    def rates(rows: dict) -> str:
        return ", ".join(f"{rows[_level_key('del', t)]['strongest']:.1%}" for t in present)

    return (
        f"Levels calibrated to {_levels(present)} attack success let the strongest attack "
        f"recover {rates(inside)} of held-out in-domain tokens (under the target, at 95 %, at "
        f"{len(_levels_under(inside, present))} of {len(present)} levels) and "
        f"{rates(outside)} out of domain on {shown(ood['text'])} (under at "
        f"{len(_levels_under(outside, present))} of {len(present)}); with no symbols at all "
        f"it recovers {inside['no_prompt']['strongest']:.1%} in domain, "
        f"{outside['no_prompt']['strongest']:.1%} out of domain."
    )


def _beyond_the_others(row: dict) -> bool:
    """The strongest attack's 95 % interval lies above every other attack's."""
    best = row["attacks"][row["strongest_attack"]]
    others = [r for name, r in row["attacks"].items() if name != row["strongest_attack"]]
    return all(best["low"] > r["high"] for r in others)


def _strongest_where(rows: list[dict], where: str) -> list[str]:
    """One sentence per attack that is the strongest somewhere."""
    private = [r for r in rows if r["target_attack_rate"] is not None]
    lines = []
    for attack in dict.fromkeys(r["strongest_attack"] for r in private):
        wins = [r for r in private if r["strongest_attack"] == attack]
        clear = [r["method"] for r in wins if _beyond_the_others(r)]
        lines.append(
            f"{where}, {in_words(attack)} is the strongest attack at {len(wins)} of "
            f"{len(private)} methods ({', '.join(r['method'] for r in wins)}), beyond every "
            f"other attack's 95 % interval at {len(clear)}"
            + (f" ({', '.join(clear)})." if clear else ".")
        )
    return lines


def _level_line(level: dict, inside: dict, outside: dict | None, ood_text: str) -> str:
    target = level["target_attack_rate"]
    line = (
        f"{percent(target)} level (μ = {level['mu']:.3g}, ε = {level['epsilon_token']:.1f} per "
        f"token): in domain {_strongest_phrase(inside)}: "
        f"{VERDICT_WORDS[label_verdict(inside, target)]}"
    )
    if outside is not None:
        line += (
            f"; out of domain ({ood_text}) {_strongest_phrase(outside)}: "
            f"{VERDICT_WORDS[label_verdict(outside, target)]}"
        )
    return line + "."


def privacy_findings(report: dict) -> list[str]:
    """Which attack is strongest where, the blind floor, then whether each DEL level's label
    holds on held-out text of its own domain and of another."""
    privacy, ood = report["privacy"], report["out_of_domain"]
    inside, outside = _by_method(privacy["rows"]), _by_method(ood["rows"])
    blind_in, blind_out = inside["no_prompt"], outside["no_prompt"]
    lines = [
        *_strongest_where(privacy["rows"], "In domain"),
        *_strongest_where(ood["rows"], "Out of domain"),
        f"With no symbols at all, from its knowledge of the language alone, the attacker's best "
        f"guess recovers {_interval(blind_in)} in domain ({in_words(blind_in['strongest_attack'])}) "
        f"and {_interval(blind_out)} out of domain ({in_words(blind_out['strongest_attack'])}): "
        "no level can be pushed below that floor.",
    ]
    if ood["prompts"] < privacy["prompts"]:
        lines.append(
            f"Out of domain, {shown(ood['text'])} holds only {ood['prompts']} windows of "
            f"{privacy['prompt_tokens']} tokens, fewer than the {privacy['prompts']} attacked in "
            "domain: its intervals are the wider for it."
        )
    for level in report["setup"]["adapter"]["levels"]:
        key = _level_key("del", level["target_attack_rate"])
        if key in inside:
            lines.append(_level_line(level, inside[key], outside.get(key), shown(ood["text"])))
    return lines
