"""EVAL.md for people, from the same dict that becomes eval.json for tools.

The headline table is a function of its own so the README's "Results" section can quote it
verbatim (and a test can check that it still does).
"""

from __future__ import annotations

from pathlib import Path

from del_client.manifest import percent

from ..attacks.recovery import CONTENT_EXCLUDES
from ..paths import shown
from ..tools.bench import concurrency_table, path_table
from .findings import VERDICT_WORDS, label_verdict
from .privacy import attacks_run, in_words

SCHEMA = "del-eval/3"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(stat: dict, digits: int = 3) -> str:
    if stat["seeds"] <= 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def _rows(report: dict) -> dict[str, dict]:
    return {row["key"]: row for row in report["utility"]["rows"]}


def _attacks(section: dict) -> dict[str, dict]:
    return {row["method"]: row for row in section["rows"]}


def _short(attack: str) -> str:
    return attack.replace("_", " ")


def _strongest(row: dict) -> str:
    """The strongest attack's rate, its 95 % interval and its name."""
    best = row["attacks"][row["strongest_attack"]]
    return (
        f"{best['rate']:.1%} [{best['low']:.1%}, {best['high']:.1%}] "
        f"({_short(row['strongest_attack'])})"
    )


def headline_markdown(report: dict) -> str:
    """One row per calibrated level: privacy, attacks, utility against the alternatives, then
    the references every level must be read against."""
    rows, attacks = _rows(report), _attacks(report["privacy"])
    ood = _attacks(report["out_of_domain"])
    comm = report["communication"]
    here = comm["computed_bits_per_token"]["this_model"]
    big = comm["computed_bits_per_token"]["7b_class"]
    prompt_tokens = report["privacy"]["prompt_tokens"]
    served = any(key.startswith("del+reader@") for key in rows)
    lines = [
        f"| target attack rate | ε per token ({prompt_tokens}-token prompt) | strongest attack, "
        "held-out tokens [95 %] | out of domain | coherence: DEL + soft prompt | DEL, no soft "
        "prompt | Gaussian + soft prompt (matched) | loss: DEL + soft prompt | DEL, no soft "
        "prompt |" + (" DEL as served (particle reader): coherence | loss |" if served else ""),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if served else ""),
    ]
    for level in report["setup"]["adapter"]["levels"]:
        t = level["target_attack_rate"]
        attack, outside = attacks.get(f"del@{t:g}"), ood.get(f"del@{t:g}")
        ours, plain = rows.get(f"del+soft@{t:g}"), rows.get(f"del@{t:g}")
        gaussian, read = rows.get(f"gaussian+soft@{t:g}"), rows.get(f"del+reader@{t:g}")
        if attack is None or outside is None or ours is None or plain is None:
            continue
        lines.append(
            f"| {percent(t)} | {attack['epsilon_token']:.1f} ({attack['epsilon_prompt']:.0f}) "
            f"| {_strongest(attack)} | {_strongest(outside)} "
            f"| {_ci(ours['coherence'])} | {_ci(plain['coherence'])} "
            f"| {_ci(gaussian['coherence']) if gaussian else '–'} | {_ci(ours['loss'])} "
            f"| {_ci(plain['loss'])} |"
            + (f" {_ci(read['coherence'])} | {_ci(read['loss'])} |" if read else "")
        )
    clean, nothing, soft = rows["clean"], rows["no_prompt"], rows.get("no_prompt+soft")
    lines += [
        "",
        f"References: clean prompt (no privacy) coherence {_ci(clean['coherence'])}, loss "
        f"{_ci(clean['loss'])}; **no prompt at all** (perfect privacy, nothing sent) coherence "
        f"{_ci(nothing['coherence'])}, loss {_ci(nothing['loss'])}"
        + (
            f", and with a soft prompt trained for it coherence {_ci(soft['coherence'])}, loss "
            f"{_ci(soft['loss'])}"
            if soft
            else ""
        )
        + (
            f"; nothing sent through the particle reader (particles of the language model's "
            f"prior) coherence {_ci(blind['coherence'])}, loss {_ci(blind['loss'])}"
            if (blind := rows.get("no_prompt+reader"))
            else ""
        )
        + f". Bits per prompt token: DEL {here['del']} vs {here['raw_fp16']} for a raw fp16 "
        f"embedding (d = {here['hidden_size']}); at 7B dimensions {big['del']} vs "
        f"{big['raw_fp16']:,}. Attack rates: share of prompt tokens the strongest of "
        f"{len(attacks_run(report['privacy']))} attacks recovers, 95 % interval clustered by prompt; out of domain: "
        f"`{shown(report['out_of_domain']['text'])}`. Loss in nats/token; ± is a 95 % interval over "
        "noise seeds.",
    ]
    return "\n".join(lines)


def _setup(report: dict) -> list[str]:
    s, cfg, u, p = report["setup"], report["config"], report["utility"], report["privacy"]
    a, at, o = s["adapter"], p["attacker"], report["out_of_domain"]
    return [
        "## Setup",
        "",
        f"- model: `{s['model']['id']}` ({s['model']['parameters']:,} parameters, hidden size "
        f"{s['model']['hidden_size']}, vocabulary {s['model']['vocab_size']}) from `{shown(s['model']['source'])}`",
        f"- adapter: `{shown(a['path'])}`: k = {a['projection_dim']}, clip {a['clip']:.4g} "
        f"({a['clip_rule']}), soft prompts of {a['soft_prompt_length']} vectors trained "
        f"{a['soft_prompt_steps']} steps; b = {cfg['bits']} bits"
        + (
            f"; served through a particle reader of {a['reader_particles']:,} particles"
            if "reader_particles" in a
            else ""
        ),
        f"- data: `{shown(s['data']['source'])}`, {s['data']['documents']} documents, the last "
        f"{s['data']['validation_documents']} held out; windows of 32 prompt + 32 continuation tokens",
        f"- utility: {u['loss_windows']} held-out windows for the loss, {u['coherence_windows']} "
        f"for coherence (greedy continuations of 32 tokens, encoder: {u['encoder']}); noise "
        f"seeds {u['seeds']}; baseline soft prompts: {u['baseline_soft_prompt_steps']} steps, seed {cfg['seed']}",
        f"- privacy: {len(attacks_run(p))} attacks on {p['prompts']} prompts of {p['prompt_tokens']} "
        f"tokens ({p['tokens']} tokens; {p['text']}), noise seed {p['noise_seed']}; "
        f"ε exact at δ = {p['delta']:g}; the attacker knows {at['public_tokens']:,} tokens of "
        f"public text ({at['public_text']}), beam width {at['beam_width']}, "
        f"{at['candidates_per_position']} candidates per position, inversion network "
        f"{at['inversion_network_steps']} steps of {at['inversion_network_batch']} pairs; out "
        f"of domain: {o['prompts']} windows of `{shown(o['text'])}`; baselines matched to each level by "
        f"DEL's calibration rule on the adapter's first {s['calibration_prompts']} calibration "
        f"prompts ({cfg['calibration_iterations']} bisection steps, then every attack)",
        f"- machine: {s['machine']['platform']}, {s['machine']['threads']} torch threads; "
        f"wall time {_wall_time(report['timings'])}",
        "",
    ]


def _attack_table(section: dict) -> list[str]:
    """Per method: each attack's token recovery, then the strongest one's in detail."""
    attacks = attacks_run(section)
    lines = [
        "| method | target | μ per token | ε per token | ε per prompt | "
        + " | ".join(_short(a) for a in attacks)
        + " | strongest [95 %] | content-token rate | prompts ≥ half | prompts exact "
        "| prompts / tokens |",
        "|---|" + "---:|" * (len(attacks) + 9),
    ]
    for r in section["rows"]:
        best = r["attacks"][r["strongest_attack"]]
        rates = " | ".join(_pct(r["attacks"].get(a, {}).get("rate")) for a in attacks)
        lines.append(
            f"| {r['method']} | {_pct(r['target_attack_rate'])} | {_num(r['mu_token'], 2)} "
            f"| {_num(r['epsilon_token'], 1)} | {_num(r['epsilon_prompt'], 0)} | {rates} "
            f"| {_strongest(r)} | {_pct(best['content_rate'])} | {_pct(best['half_prompts'])} "
            f"| {_pct(best['exact_prompts'])} | {best['prompts']} / {best['tokens']} |"
        )
    return lines


def _labels_table(report: dict) -> list[str]:
    """Each DEL level's strongest attack in and out of domain, against its target."""
    inside, outside = _attacks(report["privacy"]), _attacks(report["out_of_domain"])
    lines = [
        "| level | in domain [95 %] | label in domain | out of domain [95 %] | label out of domain |",
        "|---:|---:|---|---:|---|",
    ]
    for level in report["setup"]["adapter"]["levels"]:
        t = level["target_attack_rate"]
        here, there = inside.get(f"del@{t:g}"), outside.get(f"del@{t:g}")
        if here is None or there is None:
            continue
        lines.append(
            f"| {percent(t)} | {_strongest(here)} | {VERDICT_WORDS[label_verdict(here, t)]} "
            f"| {_strongest(there)} | {VERDICT_WORDS[label_verdict(there, t)]} |"
        )
    return lines


def _privacy(report: dict) -> list[str]:
    p, o = report["privacy"], report["out_of_domain"]
    content = next(iter(p["rows"][0]["attacks"].values()))["content_tokens"]
    attacks = "; ".join(f"`{_short(a)}`: {in_words(a)}" for a in attacks_run(p))
    return [
        "## Privacy: token inversion against exact ε",
        "",
        f"Share of prompt tokens each attack recovers on {p['prompts']} held-out prompts "
        f"({p['tokens']} tokens; {p['text']}; noise seed {p['noise_seed']}), every attack on "
        f"the same symbols: {attacks}. Intervals are 95 %, clustered by prompt. Content "
        f"tokens: those outside the {CONTENT_EXCLUDES} most frequent public tokens ({content} "
        f"of {p['tokens']}); prompts ≥ half: share of prompts with at least half of their "
        f"tokens recovered. ε is exact at δ = {p['delta']:g}, per token and for a "
        f"{p['prompt_tokens']}-token prompt (every token replaced). μ is the per-token "
        "Gaussian-DP figure (the paper's approximation for the binomial mechanism, exact for the "
        "Gaussian one). A soft prompt is server-side post-processing, so it changes nothing here.",
        "",
        *_attack_table(p),
        "",
        "`clean`: the server receives the embeddings themselves (the raw mechanism); "
        "`no_prompt`: it receives nothing and guesses from its knowledge of the language alone "
        "(its sequence attacks without symbols, or the most frequent public token).",
        "",
        *[f"- {line}" for line in report["findings"]["privacy"]],
        "",
        "![attack success against ε](attacks_vs_epsilon.png)",
        "",
        "### Out of domain",
        "",
        f"DEL's levels, calibrated on in-domain text, attacked by the same in-domain attacker on "
        f"{o['prompts']} windows of {p['prompt_tokens']} tokens of "
        f"`{shown(o['text'])}`:",
        "",
        *_attack_table(o),
        "",
        "Does each level's label hold? (Under: every attack's 95 % upper bound is below the "
        "target, the rule the levels were calibrated by.)",
        "",
        *_labels_table(report),
        "",
    ]


def _wall_time(timings: dict) -> str:
    stages = ", ".join(
        f"{k} {v:.0f} s"
        for k, v in timings.items()
        if k.endswith("_s") and k not in ("total_s", "since_first_run_s")
    )
    text = f"{timings['total_s'] / 60:.1f} min ({stages})"
    if "since_first_run_s" in timings:
        text += (
            f" in the last of the runs it was resumed over (`--resume`), "
            f"{timings['since_first_run_s'] / 60:.0f} min since the first began"
        )
    return text


def _utility(report: dict) -> list[str]:
    u = report["utility"]
    lines = [
        "## Utility, and the baselines at matched attack success rate",
        "",
        f"Loss on {u['loss_windows']} and coherence on {u['coherence_windows']} held-out windows; "
        f"noisy methods: mean ± 95 % interval over noise seeds {u['seeds']}"
        + (
            f" (the particle reader's over the first {u['reader_seeds']}: each reads every "
            "window once, so its comparisons below, paired over windows, are the ones to read)"
            if any(r.get("reader") for r in u["rows"])
            else ""
        )
        + ". Baselines are "
        "matched to each DEL level by the same attack criterion (see Setup). Coherence has a "
        "high floor on this data: the generic story that the model writes from BOS alone "
        f"scores {_rows(report)['no_prompt']['coherence']['mean']:.3f}, so read its "
        "differences against that, not against zero.",
        "",
        "| method | target | μ per token | loss (nats/token) | perplexity | coherence |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in u["rows"]:
        lines.append(
            f"| {r['label']} | {_pct(r['target_attack_rate'])} | {_num(r['mu_token'], 2)} "
            f"| {_ci(r['loss'])} | {_ci(r['perplexity'], 2)} | {_ci(r['coherence'])} |"
        )
    lines += [
        "",
        "DEL with its soft prompt, and as served by the particle reader where the adapter has "
        "one, against each alternative at the same level (both metrics paired over windows, each "
        "window's mean over seeds; 95 %):",
        "",
        "| target | method | against | coherence difference | loss difference |",
        "|---:|---|---|---:|---:|",
    ]
    for c in report["comparisons"]:
        coh, loss = c["coherence_difference"], c["loss_difference"]
        lines.append(
            f"| {percent(c['target_attack_rate'])} | `{c['method']}` | {c['against_label']} "
            f"| {coh['mean']:+.3f} ± {coh['ci95']:.3f} ({coh['verdict']}) "
            f"| {loss['mean']:+.3f} ± {loss['ci95']:.3f} ({loss['verdict']}) |"
        )
    lines += [
        "",
        *[f"- {line}" for line in report["findings"]["utility"]],
        "",
        "![utility against attack success](utility_vs_attack.png)",
        "",
        "![utility against ε](utility_vs_epsilon.png)",
        "",
        "Sample continuations (greedy, first noise seed), for reading:",
        "",
    ]
    for key, (generated, reference) in u["samples"].items():
        lines.append(f"- `{key}`: “{generated.strip()}” — reference: “{reference.strip()}”")
    lines.append("")
    return lines


def _communication(report: dict) -> list[str]:
    c = report["communication"]
    here, big = c["computed_bits_per_token"]["this_model"], c["computed_bits_per_token"]["7b_class"]
    lines = [
        "## Communication",
        "",
        f"Measured through the real gRPC path: the SDK against a server on loopback, mean of "
        f"{next(iter(c['wire'].values()))['requests']} held-out prompts per row, "
        f"{c['wire_new_tokens']} greedy tokens back. Upstream = everything the client sent "
        "(header, frames, end: gRPC messages with their 5-byte prefixes).",
        "",
        "| path | prompt tokens | upstream bytes/request | payload bits/token | wire bits/prompt token | downstream bytes/generated token |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, w in c["wire"].items():
        lines.append(
            f"| {key} | {w['prompt_tokens']:.1f} | {w['upstream_bytes_per_request']:,.0f} "
            f"| {w['payload_bits_per_token']:,.0f} | {w['wire_bits_per_prompt_token']:,.0f} "
            f"| {w['downstream_bytes_per_generated_token']:.1f} |"
        )
    lines += [
        "",
        f"Computed bits per token (b = {c['bits']}):",
        "",
        "| | raw fp32 | raw fp16 | DEL payload | DEL k = d | entropy floor (approximation) | ratio fp16 / DEL |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| this model (d = {here['hidden_size']}, k = {here['projection_dim']}) | {here['raw_fp32']:,} "
        f"| {here['raw_fp16']:,} | {here['del']:,} | {here['del_full']:,} "
        f"| {here['entropy_approximation_del']:.0f} | {here['raw_fp16'] / here['del']:.0f}× |",
        f"| 7B class (d = {big['hidden_size']}, k = {big['projection_dim']}) | {big['raw_fp32']:,} "
        f"| {big['raw_fp16']:,} | {big['del']:,} | {big['hidden_size'] * c['bits']:,} "
        f"| {big['entropy_approximation_del']:.0f} | {big['raw_fp16'] / big['del']:.0f}× |",
        "",
        "Measured entropy of the transmitted symbols (the floor an ideal entropy coder would "
        "reach), per method and level:",
        "",
        "| method | payload bits/token | entropy bits/token | tokens |",
        "|---|---:|---:|---:|",
    ]
    for key, e in c["symbol_entropy"].items():
        lines.append(
            f"| {key} | {e['payload_bits_per_token']} | {e['entropy_bits_per_token']:.1f} | {e['tokens']} |"
        )
    lines += ["", "![bits per token](bits_per_token.png)", ""]
    return lines


def _percentiles(distribution: dict) -> str:
    percentiles = distribution["percentiles_ms"]
    if not percentiles:
        return "–"
    return " / ".join(f"{percentiles[p]:.1f}" for p in (50, 90, 99))


def _speed(report: dict) -> list[str]:
    s = report["speed"]
    e2e = s["end_to_end"]
    lines = [
        "## Speed",
        "",
        "Codec (del_client.bench: privatize + pack + frame, and back; one thread, best of 3):",
        "",
        "| k | b | encode tokens/s | decode tokens/s | wire bits/token (32-token prompt) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for codec in s["codec"]:
        lines.append(
            f"| {codec['dim']} | {codec['bits']} | {codec['encode_tokens_per_s']:,.0f} "
            f"| {codec['decode_tokens_per_s']:,.0f} | {codec['wire_bits_per_token_prompt']:.1f} |"
        )
    lines += [
        "",
        f"End to end (del_server.tools.bench: `{shown(e2e['model'])}` with its PCA default, μ = {e2e['mu']}, "
        f"greedy, {e2e['new_tokens']} new tokens, median of {e2e['repeats']}):",
        "",
        *path_table(e2e),
        "",
        *concurrency_table(e2e),
    ]
    lines += [
        "",
        f"Latency distributions through gRPC with the trained adapter ({s['new_tokens']} new "
        "tokens, greedy), p50 / p90 / p99 in ms:",
        "",
        "| streams | requests | time to first token | inter-token latency | gaps |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in s["latency"]:
        lines.append(
            f"| {row['streams']} | {row['requests']} | {_percentiles(row['time_to_first_token'])} "
            f"| {_percentiles(row['inter_token_latency'])} | {row['inter_token_latency']['samples']} |"
        )
    lines += ["", "![latency](latency.png)", ""]
    return lines


def write_markdown(report: dict, path: Path) -> None:
    mode = report["config"]["mode"]
    lines = [
        f"# DEL evaluation ({mode})",
        "",
        f"Generated by `{report['command']}` (schema `{report['schema']}`). Every number below "
        "comes from `eval.json` beside this file; every figure states its sample size and seeds.",
    ]
    if mode != "full":
        lines += [
            "",
            f"**This is a `{mode}` run on small samples: it checks that the pipeline works. "
            "Quote the numbers of `make eval` only.**",
        ]
    lines += [
        "",
        "## Headline",
        "",
        *[f"- {line}" for line in report["findings"]["summary"]],
        "",
        headline_markdown(report),
        "",
        "Per level:",
        "",
        *[f"- {line}" for line in report["findings"]["utility"]],
        "",
        *_setup(report),
        *_privacy(report),
        *_utility(report),
        *_communication(report),
        *_speed(report),
    ]
    path.write_text("\n".join(lines) + "\n")
