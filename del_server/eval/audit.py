"""Do an adapter's levels still hold against a stronger attacker? (`del-server audit`)

A level's label is a claim: the strongest attack we know recovers less than its target. The
calibration measured that with a fixed attacker strength (DEFAULT_PARTICLES particles, the
trigram over DEFAULT_TRIGRAM_KEEP candidates) on its own prompts. An attack that samples (the
LLM particle filter and smoother) grows stronger with more samples, and fresh prompts differ;
the audit measures each level again on prompts the calibration never saw, with an attacker as
strong as the provider can afford, and applies the calibration's rule: a level holds when the
upper end of the strongest attack's 95 % interval is under its target.

An encoder's (classification) adapter is audited alike on the dev sentences it was calibrated
on (after the calibration's windows), in windows as long as its calibration's, by the attacks
an encoder leaves (no causal LM: no LM attacks).

`mus` audits candidate μ instead of the levels: where a level would have to move to hold.
`reuse` keeps the rows of an earlier audit in the same place that still apply (the same
attacker, prompts, projection and μ), so that after one level is recalibrated only it is
attacked again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from del_client.manifest import percent
from del_client.parameters import DEFAULT_BITS

from ..adapter import Adapter
from ..attacks.mechanisms import Binomial
from ..attacks.suite import PARTICLE_ATTACKS, Attacker, AttackOptions, strongest, without_lm
from ..calibration import CalibratedLevel
from ..errors import InputError
from ..models import LoadedModel, load_model
from ..paths import recorded
from ..processes import bar_line, map_in_processes
from ..train.calibrate import REPORT_DELTA, level_holds
from ..train.data import load_split
from ..train.labelled import load_labelled
from .config import AuditConfig
from .context import file_sha256


class AuditError(InputError):
    """The audit cannot run as asked (said in one line, before anything is attacked)."""


def run(config: AuditConfig) -> dict:
    """Attack every level (or candidate μ), `config.jobs` at a time in worker processes;
    writes audit.json, AUDIT.md and audit.png."""
    started = time.perf_counter()
    adapter = Adapter.load(config.adapter)
    if not adapter.calibration:
        raise AuditError(f"{config.adapter}: the adapter has no calibrated levels to audit")
    config = _runnable(config, adapter)
    skip = (
        config.skip
        if config.skip is not None
        else max(level.prompts for level in adapter.calibration)
    )
    held_out = _scene(config).prompts
    available, length = held_out.shape
    if skip + config.prompts > available:
        raise AuditError(
            f"{config.data} holds {available} held-out prompts: {config.prompts} after "
            f"the first {skip} do not fit (fewer --prompts, or a smaller --skip)"
        )
    prompts = {"first": skip, "count": config.prompts, "tokens": config.prompts * length}
    projection = projection_sha256(adapter)
    pairs = _audited(adapter, config)
    earlier = _reusable(config, prompts, projection) if config.reuse else {}
    todo = [pair for pair in pairs if pair not in earlier]
    attacked = dict(zip(todo, _attack_all(config, skip, todo), strict=True))
    report = {
        "config": recorded(config),
        "adapter_tensors_sha256": file_sha256(config.adapter / "adapter.safetensors"),
        "projection_sha256": projection,
        "bits": _bits(adapter),
        "task": adapter.task.name if adapter.task else None,
        "prompts": prompts,
        "calibrated": [_calibrated(level) for level in adapter.calibration],
        "audited": [earlier.get(pair) or attacked[pair] for pair in pairs],
        "reused_mu": [mu for target, mu in pairs if (target, mu) in earlier],
        "seconds": time.perf_counter() - started,
    }
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "audit.json").write_text(json.dumps(report, indent=2) + "\n")
    render(report, config.out)
    return report


def _runnable(config: AuditConfig, adapter: Adapter) -> AuditConfig:
    """The config with only the attacks the adapter's model can run: an encoder's (a
    classification adapter's) has no causal LM for the LM attacks."""
    if adapter.task is None:
        return config
    kept = without_lm(config.attacks)
    if not kept:
        raise AuditError(
            f"{config.adapter} classifies with an encoder, which has no causal LM for "
            f"{', '.join(config.attacks)}: ask for others (--attacks bigram_marginal,"
            "trigram_marginal)"
        )
    return replace(config, attacks=kept)


def _attack_all(config: AuditConfig, skip: int, pairs: list) -> list[dict]:
    """Each pair attacked, `config.jobs` at a time, with a progress bar of its own."""
    attacked = map_in_processes(
        partial(_attacked, config, skip),
        pairs,
        jobs=config.jobs,
        threads=config.threads,
        desc="audit",
    )
    return list(attacked)


def projection_sha256(adapter: Adapter) -> str:
    """SHA-256 of all the attacks see of an adapter: the projection and its clip (not the
    soft prompts or front-ends, which recalibrating a level retrains)."""
    digest = hashlib.sha256()
    for tensor in (adapter.down, adapter.up, adapter.mean):
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    digest.update(repr((adapter.clip, adapter.norm_bound)).encode())
    return digest.hexdigest()


# What an earlier audit must share with this one for its rows to stand for this one's.
_SAME_ATTACKER = ("model", "data", "particles", "trigram_keep", "prefix_steps", "attacks", "seed")


def _reusable(config: AuditConfig, prompts: dict, projection: str) -> dict[tuple, dict]:
    """The rows of OUT/audit.json, by (target, μ), if the same attacker measured them on the
    same prompts through the same projection; else none."""
    stored = config.out / "audit.json"
    if not stored.is_file():
        return {}
    earlier = json.loads(stored.read_text())
    now = json.loads(json.dumps(recorded(config)))  # tuples as JSON stores them
    same = (
        all(earlier["config"].get(key) == now[key] for key in _SAME_ATTACKER)
        and earlier["prompts"] == prompts
        and earlier.get("projection_sha256") == projection
    )
    return {(e["target"], e["mu"]): e for e in earlier["audited"]} if same else {}


def render(report: dict, out: Path) -> None:
    """AUDIT.md and audit.png from a report (`--render-only` redraws them from audit.json)."""
    (out / "AUDIT.md").write_text(markdown(report))
    plot(report, out / "audit.png")


@dataclass(frozen=True, eq=False)
class _Scene:
    attacker: Attacker
    prompts: np.ndarray  # (P, T) every held-out prompt of the data


@lru_cache(maxsize=1)
def _scene(config: AuditConfig) -> _Scene:
    """The model, the data and the attacker, loaded once per process: a causal LM's
    validation prompts, or an encoder's dev sentences (as the classification training
    calibrates on them) in windows as long as the levels were calibrated on."""
    torch.set_num_threads(config.threads)
    loaded = load_model(config.model)
    adapter = Adapter.load(config.adapter)
    if not adapter.fits(loaded.embeddings):
        raise AuditError(
            f"{config.adapter} was built for another model's embeddings than {config.model}'s"
        )
    options = AttackOptions(
        particles=config.particles,
        trigram_keep=config.trigram_keep,
        prefix_steps=config.prefix_steps,
    )
    try:
        if loaded.is_encoder:
            return _encoder_scene(config.data, loaded, adapter.calibration[0], options)
        split = load_split(config.data, loaded.tokenizer)
    except InputError:
        raise  # it names what --data lacks
    except (OSError, ValueError) as error:  # a file that is not text, or not readable
        wanted = "a task folder (train.tsv, dev.tsv)" if loaded.is_encoder else "text files"
        raise AuditError(f"--data {config.data}: cannot read {wanted} ({error})") from None
    attacker = Attacker.of_model(loaded.model, loaded.bos_id, split.train, options)
    return _Scene(attacker, split.validation.prompts.numpy())


def _encoder_scene(
    data: str, loaded: LoadedModel, level: CalibratedLevel, options: AttackOptions
) -> _Scene:
    """The dev sentences the classification pipeline calibrates on, in windows as long as
    `level`'s calibration prompts; the training sentences are the attacker's language."""
    sentences = load_labelled(data, loaded.tokenizer)
    attacker = Attacker.of_encoder(loaded.model, sentences.language, options)
    return _Scene(attacker, sentences.dev.windows(None, level.tokens // level.prompts))


def _attacked(config: AuditConfig, skip: int, pair: tuple[float | None, float]) -> dict:
    """One level (target, μ) attacked on the audit's prompts."""
    target, mu = pair
    scene = _scene(config)
    adapter = Adapter.load(config.adapter)
    prompts = scene.prompts[skip : skip + config.prompts]
    mechanism = Binomial.at(
        mu=mu, dim=adapter.projection_dim, bits=_bits(adapter), clip=adapter.clip
    )
    rates = scene.attacker.attack(
        adapter,
        mechanism,
        prompts,
        seed=config.seed,
        attacks=config.attacks,
        progress=partial(tqdm, desc=_label(pair), position=bar_line(), leave=False),
    )
    name, worst = strongest(rates)
    return {
        "target": target,
        "mu": mu,
        "epsilon_token": mechanism.epsilon(delta=REPORT_DELTA),
        "attacks": {a: r.to_dict() for a, r in rates.items()},
        "strongest_attack": name,
        "rate": worst.rate,
        "high": max(r.high for r in rates.values()),
        "holds": None if target is None else bool(level_holds(rates, target)),
    }


def _label(pair: tuple[float | None, float]) -> str:
    target, mu = pair
    return f"μ = {mu:.4g}" if target is None else f"{percent(target)} level"


def _bits(adapter: Adapter) -> int:
    return adapter.metadata.get("bits", DEFAULT_BITS)


def _audited(adapter: Adapter, config: AuditConfig) -> list[tuple[float | None, float]]:
    """(target, μ) pairs: the levels asked for, or candidate μ with no target of their own."""
    if config.mus:
        return [(None, mu) for mu in config.mus]
    offered = {level.target_attack_rate: level.mu for level in adapter.calibration}
    unknown = [target for target in config.levels if target not in offered]
    if unknown:
        raise AuditError(
            f"{config.adapter} offers no level for {', '.join(map(percent, unknown))}: its "
            f"levels are {', '.join(map(percent, offered))}"
        )
    return [(t, mu) for t, mu in offered.items() if not config.levels or t in config.levels]


def _calibrated(level) -> dict:
    worst = level.strongest
    return {
        "target": level.target_attack_rate,
        "mu": level.mu,
        "strongest_attack": level.strongest_attack,
        "rate": worst.rate,
        "low": worst.low,
        "high": worst.high,
        "prompts": level.prompts,
    }


def failing(report: dict) -> list[dict]:
    """The audited levels whose strongest attack's 95 % bound reaches their target."""
    return [entry for entry in report["audited"] if entry["holds"] is False]


def markdown(report: dict) -> str:
    c = report["config"]
    p = report["prompts"]
    calibrated = {level["mu"]: level for level in report["calibrated"]}
    attacks = _attacks(report)
    settings = _settings(c, attacks)
    attacker = f"; the attacker at {', '.join(settings)}" if settings else ""
    rows = []
    for entry in report["audited"]:
        level = calibrated.get(entry["mu"])
        before = (
            f"{level['rate']:.2%} ({level['high']:.2%}) {level['strongest_attack']}"
            if level
            else "–"
        )
        verdict = {True: "holds", False: "**fails**", None: _would_hold(entry, report)}[
            entry["holds"]
        ]
        target = percent(entry["target"]) if entry["target"] is not None else "–"
        rates = " | ".join(f"{entry['attacks'][a]['rate']:.2%}" for a in attacks)
        rows.append(
            f"| {target} | {entry['mu']:.4g} | {entry['epsilon_token']:.1f} | {before} | {rates} | "
            f"{entry['rate']:.2%} ({entry['high']:.2%}) | {verdict} |"
        )
    lines = [
        f"# Level audit: {Path(c['adapter']).name}",
        "",
        f"Reproduce with: `{c['command'] or 'del-server audit'}` "
        f"({report['seconds'] / 60:.1f} min; {c['jobs']} process(es) of {c['threads']} torch "
        "thread(s)).",
        *_reuse_note(report),
        "",
        f"{p['count']} held-out prompts ({p['tokens']} tokens) after the first {p['first']} of "
        f"`{Path(c['data']).name}`'s {_prompt_source(report)}, noise seed {c['seed']}"
        f"{attacker}. A level holds when the strongest attack's 95 % upper bound "
        "(clustered by prompt) is under its target, as in the calibration.",
        "",
        f"| target | μ | ε/token | calibrated strongest (95 % high) | "
        f"{' | '.join(attacks)} | audited strongest (95 % high) | verdict |",
        "|---:|---:|---:|---|" + "---:|" * len(attacks) + "---:|---|",
        *rows,
        "",
        "![audit](audit.png)",
        "",
    ]
    return "\n".join(lines)


def _prompt_source(report: dict) -> str:
    """Where the audit's prompts come from: a causal LM's validation split, or the dev
    sentences a classification adapter is calibrated on."""
    return "validation split" if report.get("task") is None else "dev sentences (tokens only)"


def _attacks(report: dict) -> list[str]:
    """The attacks this audit ran: its table's columns."""
    return list(report["audited"][0]["attacks"]) if report["audited"] else []


def _settings(config: dict, attacks: list[str]) -> list[str]:
    """The settings of the sampled or pruned attacks this audit ran, and only of those."""
    settings = []
    if set(PARTICLE_ATTACKS) & set(attacks):
        settings.append(f"{config['particles']} particles")
    if "trigram_marginal" in attacks:
        settings.append(f"trigram over {config['trigram_keep']}")
    return settings


def _reuse_note(report: dict) -> list[str]:
    reused = report.get("reused_mu", [])
    if not reused:
        return []
    shown = ", ".join(f"{mu:.4g}" for mu in reused)
    return [
        "",
        f"The rows at μ = {shown} are an earlier audit's (`--reuse`): the same attacker, "
        "prompts, projection and μ; the time above is for the rest.",
    ]


def _would_hold(candidate: dict, report: dict) -> str:
    """The adapter's levels a candidate μ's bound would hold, by their targets."""
    held = [
        level["target"] for level in report["calibrated"] if candidate["high"] < level["target"]
    ]
    return f"would hold the {percent(min(held))} level" if held else "holds no level"


def plot(report: dict, path: Path) -> None:
    """Each level's strongest attack, as calibrated and as audited, with its 95 % interval,
    against its target: a level holds while the audited interval stays under its mark."""
    figure, axes = plt.subplots(figsize=(7, 4.2))
    calibrated = {level["mu"]: level for level in report["calibrated"]}
    for x, entry in enumerate(report["audited"]):
        audited = entry["attacks"][entry["strongest_attack"]]
        level = calibrated.get(entry["mu"])
        shown = [(x + 0.12, audited, "C3", "audited: fresh prompts, this attacker")]
        if level is not None:
            shown.insert(0, (x - 0.12, level, "C0", "as calibrated: its own prompts"))
        for where, rates, colour, label in shown:
            axes.errorbar(
                where,
                100 * rates["rate"],
                yerr=[
                    [100 * (rates["rate"] - rates["low"])],
                    [100 * (rates["high"] - rates["rate"])],
                ],
                fmt="o",
                color=colour,
                capsize=4,
                label=label if x == 0 else None,
            )
        if entry["target"] is not None:
            axes.hlines(100 * entry["target"], x - 0.35, x + 0.35, colors="k", linestyles="--")
    axes.set_xticks(
        range(len(report["audited"])),
        [
            (f"{percent(e['target'])} level\n" if e["target"] is not None else "")
            + f"μ = {e['mu']:.3g}"
            for e in report["audited"]
        ],
    )
    axes.set_xlim(-0.6, len(report["audited"]) - 0.4)
    axes.set_ylabel("strongest attack's token recovery (%)")
    fresh = f"{report['prompts']['count']} fresh prompts"
    described = ", ".join([*_settings(report["config"], _attacks(report)), fresh])
    axes.set_title(
        f"Levels audited: {described} (dashed: the target)",
        fontsize=9,
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
