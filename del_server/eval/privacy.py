"""Token inversion at the server, for every method, against exact ε per token and per prompt.

Every attack of del_server.attacks (suite.ATTACKS: per-token, learned, bigram sequence and the
model's own beam search) runs on the same symbols of the same held-out prompts, for each
private method; a row keeps each attack's recovery and names the strongest. Two reference rows
bound them:
    clean      the server receives the embeddings themselves: exact lookup reads them
    no_prompt  it receives nothing: the best blind guess, from the attacker's language prior
               alone (Attacker.prior_alone) or the most frequent token of public text
A soft prompt or the particle reader is server-side post-processing: it changes nothing the
attacker sees, so only the methods without either are attacked.

The out-of-domain stage attacks DEL's levels on text of another domain with the same
(in-domain) attacker: the levels were calibrated in domain, does each label still hold?
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..attacks.recovery import Recovery, content_mask, recovery
from ..attacks.suite import ATTACKS_IN_WORDS, strongest
from ..attacks.tokenwise import exact_lookup_guesses
from ..paths import shown
from .context import EvalContext
from .methods import Method
from .units import checkpointed

REFERENCE_ATTACKS_IN_WORDS = {
    "exact_lookup": "exact lookup of the received embedding",
    "most_frequent": "the most frequent public token",
}


def in_words(attack: str) -> str:
    return {**ATTACKS_IN_WORDS, **REFERENCE_ATTACKS_IN_WORDS}[attack]


def attacks_run(section: dict) -> tuple[str, ...]:
    """The attacks a report's privacy section measured, in the suite's order: a report keeps
    the attacks of its run when the suite has grown since."""
    seen = {name for row in section["rows"] for name in row["attacks"]}
    return tuple(a for a in ATTACKS_IN_WORDS if a in seen)


@dataclass(frozen=True)
class AttackRow:
    method: str  # Method.key
    family: str
    attacks: dict[str, dict]  # attack name -> attacks.recovery.Recovery as a dict
    strongest_attack: str
    strongest: float  # its token recovery rate
    strongest_high: float  # the upper end of its 95 % interval (clustered by prompt)
    target_attack_rate: float | None = None
    mu_token: float | None = None
    epsilon_token: float | None = None  # exact, at the report's δ
    epsilon_prompt: float | None = None  # exact, every token of a prompt_tokens-long prompt

    def to_dict(self) -> dict:
        return asdict(self)


def _row(key: str, family: str, results: dict[str, Recovery], **privacy) -> AttackRow:
    name, best = strongest(results)
    return AttackRow(
        method=key,
        family=family,
        attacks={attack: r.to_dict() for attack, r in results.items()},
        strongest_attack=name,
        strongest=best.rate,
        strongest_high=best.high,
        **privacy,
    )


def noise_seed(ctx: EvalContext) -> int:
    """Not the calibration's seed, so no level is scored on the draws it was tuned on."""
    return ctx.config.seed + 1


def attack_method(ctx: EvalContext, method: Method, prompts: np.ndarray) -> AttackRow:
    """Every attack on one private method, with its exact ε per token and per prompt."""
    mechanism, delta = method.mechanism, ctx.config.delta
    results = ctx.attacker.attack(method.adapter, mechanism, prompts, seed=noise_seed(ctx))
    return _row(
        method.key,
        method.family,
        results,
        target_attack_rate=method.target_attack_rate,
        mu_token=mechanism.mu(),
        epsilon_token=mechanism.epsilon(delta=delta),
        epsilon_prompt=mechanism.epsilon(delta=delta, tokens=ctx.prompt_tokens),
    )


def _scored(ctx: EvalContext, guesses: np.ndarray, prompts: np.ndarray) -> Recovery:
    attacker = ctx.attacker
    return recovery(guesses, prompts, content_mask(prompts, attacker.public_ids, attacker.vocab))


def reference_rows(ctx: EvalContext, prompts: np.ndarray) -> list[AttackRow]:
    """The two ends: raw embeddings (the server sees the vectors themselves) and no prompt (it
    sees nothing and can only guess from what it knows of the language)."""
    attacker, embeddings = ctx.attacker, ctx.embeddings
    received = embeddings[prompts.reshape(-1)].numpy()
    lookup = exact_lookup_guesses(embeddings, received).reshape(prompts.shape)
    frequent = np.bincount(attacker.public_ids, minlength=attacker.vocab).argmax()
    blind = {
        **attacker.prior_alone(prompts),
        "most_frequent": _scored(ctx, np.full_like(prompts, frequent), prompts),
    }
    return [
        _row("clean", "clean", {"exact_lookup": _scored(ctx, lookup, prompts)}),
        _row("no_prompt", "no_prompt", blind),
    ]


def _attacked(ctx: EvalContext, methods: list[Method], text: str, stage: str) -> dict:
    """The references and every method attacked on the stage's prompts, `config.jobs`
    methods at a time (eval.units)."""
    prompts = _STAGE_PROMPTS[stage](ctx)
    units = {f"{stage}/{method.key}": (stage, method) for method in methods}
    attacked = checkpointed(ctx, _attack_row, units, desc=f"attacks on {text}")
    rows = [row.to_dict() for row in reference_rows(ctx, prompts)] + list(attacked.values())
    return {"text": text, "prompts": len(prompts), "tokens": int(prompts.size), "rows": rows}


def _attack_row(ctx: EvalContext, unit: tuple[str, Method]) -> dict:
    stage, method = unit
    return attack_method(ctx, method, _STAGE_PROMPTS[stage](ctx)).to_dict()


_STAGE_PROMPTS = {"privacy": EvalContext.attack_prompts, "out-of-domain": EvalContext.ood_prompts}


def seen_by_attacker(methods: list[Method]) -> list[Method]:
    """The private methods as sent: what the attacker sees, once per level."""
    return [m for m in methods if m.mechanism is not None and not m.server_side]


def privacy_stage(ctx: EvalContext, methods: list[Method]) -> dict:
    """Attack rows for every private method and the references, on held-out prompts."""
    config, attacker = ctx.config, ctx.attacker
    options = attacker.options
    text = "held-out continuations, disjoint from the calibration prompts"
    return {
        **_attacked(ctx, seen_by_attacker(methods), text, "privacy"),
        "noise_seed": noise_seed(ctx),
        "delta": config.delta,
        "prompt_tokens": ctx.prompt_tokens,
        "attacker": {
            "public_text": "the training split, in reading order",
            "public_tokens": int(attacker.public_ids.size),
            "beam_width": options.beam_width,
            "candidates_per_position": options.keep,
            "inversion_network_steps": options.learned_steps,
            "inversion_network_batch": options.learned_batch,
            "inversion_network_seed": noise_seed(ctx),
        },
    }


def out_of_domain_stage(ctx: EvalContext, methods: list[Method]) -> dict:
    """DEL's levels attacked on windows of the out-of-domain text by the in-domain attacker."""
    levels = [m for m in seen_by_attacker(methods) if m.family == "del"]
    return _attacked(ctx, levels, shown(ctx.config.ood_data), "out-of-domain")
