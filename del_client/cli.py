"""`del-client`: generate or classify privately through a server, read its manifest, explain
a privacy setting, measure the codec.

    del-client generate "Once upon a time" --server localhost:50051 --mu 10 --max-new-tokens 64
    del-client classify "a charming and often affecting journey" --server localhost:50052
    del-client evaluate dev.tsv --server localhost:50052 --level 0.10 --concurrency 8
    del-client manifest --server localhost:50051 --json
    del-client budget --identity alice --json
    del-client loadtest --server localhost:50051 --concurrency 8 --duration 30 --json

Connections: --tls (or --ca FILE) for TLS, --cert/--key for mutual TLS; the bearer token comes
from $DEL_TOKEN or --token-file, never from a flag (other users can read flags in `ps`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .errors import DELError, RequestOptionError
from .parameters import DEFAULT_BITS, DEFAULT_DELTA, MAX_BITS, MECHANISMS, MIN_BITS

if TYPE_CHECKING:  # the manifest imports gRPC's messages: only when a command needs them
    from .manifest import ModelInfo

# SGR faint and reset: the prompt is dimmed on a terminal so the continuation stands apart.
_DIM, _RESET = "\033[2m", "\033[0m"


class _Command(argparse.ArgumentParser):
    """A subcommand whose options are declared when it is used (parsed, or its help shown).

    Declaring them imports the modules whose defaults they show (numpy, gRPC, numba, scipy:
    seconds), which neither `del-client --help` nor any other subcommand should wait for.
    """

    def __init__(self, *args, declare: Callable[[argparse.ArgumentParser], None], **kwargs):
        super().__init__(*args, **kwargs)
        self._declare: Callable[[argparse.ArgumentParser], None] | None = declare

    def _declared(self) -> None:
        if self._declare is not None:
            declare, self._declare = self._declare, None
            declare(self)

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._declared()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._declared()
        return super().format_help()


def _add_privacy(cmd: argparse.ArgumentParser) -> None:
    cmd.description = "Derive the quantizer from a privacy target and report its exact guarantee."
    target = cmd.add_mutually_exclusive_group(required=True)
    target.add_argument("--mu", type=float, help="per-token Gaussian-DP level (paper calibration)")
    target.add_argument("--epsilon", type=float, help="per-token ε at --delta (exact)")
    cmd.add_argument("--dim", type=int, required=True, help="projection dim k")
    cmd.add_argument(
        "--bits",
        type=int,
        default=DEFAULT_BITS,
        help=f"bits per coordinate b, {MIN_BITS}..{MAX_BITS}",
    )
    cmd.add_argument("--clip", type=float, required=True, help="clip bound c")
    cmd.add_argument("--tokens", type=int, default=32, help="prompt length T")
    cmd.add_argument("--delta", type=float, default=DEFAULT_DELTA, help="δ at which ε is reported")
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.set_defaults(run=_run_privacy)


def _run_privacy(args: argparse.Namespace) -> None:
    from .mechanism import PrivacySpec
    from .privacy import privacy_report

    shape = {"dim": args.dim, "bits": args.bits, "clip": args.clip}
    if args.mu is not None:
        spec = PrivacySpec.from_mu(mu=args.mu, **shape)
    else:
        spec = PrivacySpec.from_epsilon(epsilon=args.epsilon, delta=args.delta, **shape)
    report = privacy_report(spec, tokens=args.tokens, delta=args.delta)
    if args.json:
        print(json.dumps(report.to_dict()))
        return
    print(
        f"mechanism     k={report.dim} coordinates x b={report.bits} bits, clip c={report.clip:g}\n"
        f"scale         A = {report.A:.6g}   (q = {report.q:.6f}, K = {report.levels} draws)\n"
        f"wire          {report.bits_per_token} payload bits per token\n"
        f"per token     ε = {report.epsilon_token:.6g} at δ = {report.delta:g} (exact)"
        f"   μ = {report.mu_token:.6g} (paper, CLT: ε ≈ {report.epsilon_token_gdp_approx:.6g})\n"
        f"per prompt    ε = {report.epsilon_prompt:.6g} at δ = {report.delta:g} for "
        f"{report.tokens} tokens (exact)   μ = {report.mu_prompt:.6g}"
    )


def _add_bench_codec(cmd: argparse.ArgumentParser) -> None:
    cmd.description = (
        "Like `openssl speed`: privatize+pack (or code) and unpack (or decode)+dequantize "
        "throughput on 1 thread, for packed and entropy-coded (ans) frames, and their sizes "
        "against the symbols' entropy."
    )
    cmd.add_argument("--dim", type=int, default=128)
    cmd.add_argument("--bits", type=int, default=DEFAULT_BITS)
    cmd.add_argument("--tokens", type=int, default=100_000)
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.set_defaults(run=_run_bench_codec)


def _run_bench_codec(args: argparse.Namespace) -> None:
    from .bench import measure_codec

    r = measure_codec(dim=args.dim, bits=args.bits, tokens=args.tokens)
    if args.json:
        print(json.dumps({**asdict(r), "ans_over_entropy": r.ans_over_entropy}))
        return
    print(
        f"k={r.dim} b={r.bits}, bits per token, tokens per second on one thread\n"
        f"packed   {r.payload_bits_per_token} payload, {r.wire_bits_per_token_prompt:.1f} wire "
        f"(32-token prompt); encode {r.encode_tokens_per_s:,.0f}, "
        f"decode {r.decode_tokens_per_s:,.0f}\n"
        f"ans      {r.ans_payload_bits_per_token:.1f} payload, "
        f"{r.ans_wire_bits_per_token_prompt:.1f} wire (32-token prompt); "
        f"encode {r.ans_encode_tokens_per_s:,.0f}, decode {r.ans_decode_tokens_per_s:,.0f} "
        f"(symbol model built in {r.model_build_s:.3f} s)\n"
        f"entropy  {r.symbol_entropy_bits_per_token:.1f} floor (the symbols' own), "
        f"{r.model_cross_entropy_bits_per_token:.1f} under the model; "
        f"coded frames = {r.ans_over_entropy:.3f} x the floor"
    )


def _add_server(cmd: argparse.ArgumentParser) -> None:
    from .config import LOAD_BALANCING

    cmd.add_argument(
        "--server",
        default="localhost:50051",
        help="host:port of a del-server (also dns:///host:port, or ipv4:a:port,b:port)",
    )
    cmd.add_argument(
        "--load-balancing",
        choices=LOAD_BALANCING,
        default="pick_first",
        help="round_robin: spread calls over every address the server name resolves to",
    )
    tls = cmd.add_argument_group("connection security")
    tls.add_argument("--tls", action="store_true", help="TLS, server checked against system CAs")
    tls.add_argument("--ca", type=Path, help="PEM CA file to check the server with (implies --tls)")
    tls.add_argument("--cert", type=Path, help="PEM client certificate (mutual TLS)")
    tls.add_argument("--key", type=Path, help="PEM key of --cert")
    tls.add_argument("--server-name", help="name expected in the server certificate")
    tls.add_argument("--token-file", type=Path, help="file holding the bearer token ($DEL_TOKEN)")
    tls.add_argument("--deadline", type=float, default=120.0, help="seconds per call")
    tls.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE before a reply")


def _config(args: argparse.Namespace):
    """The ClientConfig the connection flags describe; the token from a file or $DEL_TOKEN."""
    from .config import ClientConfig
    from .errors import ConfigError

    token = os.environ.get("DEL_TOKEN") or None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file: {exc}") from exc
    return ClientConfig(
        args.server,
        deadline_s=args.deadline,
        tls=args.tls,
        root_certificates=args.ca,
        client_certificate=args.cert,
        client_key=args.key,
        server_name=args.server_name,
        token=token,
        retries=args.retries,
        load_balancing=args.load_balancing,
        payload_encoding=getattr(args, "payload_encoding", "auto"),  # commands that send frames
    )


def _add_payload_encoding(cmd: argparse.ArgumentParser) -> None:
    from .config import PAYLOAD_ENCODINGS

    cmd.add_argument(
        "--payload-encoding",
        choices=PAYLOAD_ENCODINGS,
        default="auto",
        help="how frames carry the symbols: auto entropy-codes them when the server decodes "
        "that (about a fifth fewer bits at b = 4), packed never, ans always",
    )


def _add_ledger(cmd, *, identity: str) -> None:
    cmd.add_argument(
        "--ledger",
        type=Path,
        help="privacy ledger file (default $DEL_LEDGER or ~/.local/state/del/privacy_ledger.json)",
    )
    cmd.add_argument("--identity", help=f"whose budget (default: {identity})")


def _add_private_prompt(cmd: argparse.ArgumentParser) -> None:
    """The prompt, the server and how the prompt is privatized and paid for: what generate and
    classify share."""
    from .ledger import DEFAULT_IDENTITY

    cmd.add_argument("prompt")
    _add_server(cmd)
    target = cmd.add_mutually_exclusive_group()
    target.add_argument(
        "--mu",
        type=float,
        help="per-token Gaussian-DP level (paper calibration); with no privacy option the "
        "server's most private calibrated level is used",
    )
    target.add_argument("--epsilon", type=float, help="per-token ε at --delta (exact)")
    target.add_argument(
        "--level",
        type=float,
        metavar="RATE",
        help="the server's calibrated level for this target attack success rate, e.g. 0.10: "
        "its μ and bits (`del-client manifest` lists them with their ε and attack rates)",
    )
    cmd.add_argument(
        "--delta", type=float, default=DEFAULT_DELTA, help="δ for --epsilon and for the ε reported"
    )
    cmd.add_argument(
        "--bits",
        type=int,
        help=f"bits per coordinate, {MIN_BITS}..{MAX_BITS} (default {DEFAULT_BITS})",
    )
    cmd.add_argument(
        "--mechanism",
        choices=MECHANISMS,
        default="binomial",
        help="raw sends plain embeddings: NO privacy (a baseline)",
    )
    _add_payload_encoding(cmd)
    spend = cmd.add_argument_group(
        "privacy budget (persistent, per identity)",
        "Any of these charges the ledger (see `del-client budget`); without --budget-epsilon, "
        "against the limit the ledger holds for the identity.",
    )
    spend.add_argument(
        "--budget-epsilon",
        type=float,
        help="refuse, before sending, a prompt that would take this identity's "
        "total ε past this; sets the identity's limit in the ledger",
    )
    spend.add_argument(
        "--budget-delta",
        type=float,
        help=f"δ at which --budget-epsilon is counted (default {DEFAULT_DELTA:g})",
    )
    _add_ledger(spend, identity=DEFAULT_IDENTITY)


def _add_generate(cmd: argparse.ArgumentParser) -> None:
    cmd.description = (
        "Stream the continuation to stdout after the prompt (the prompt dimmed on a terminal, "
        "plain in a pipe); a summary of wire bits and exact ε goes to stderr."
    )
    _add_private_prompt(cmd)
    cmd.add_argument("--max-new-tokens", type=int, default=64)
    cmd.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    cmd.add_argument("--top-p", type=float, default=1.0)
    cmd.add_argument("--top-k", type=int, default=0, help="0 = off")
    cmd.add_argument("--seed", type=int, help="fixes the server's sampling (not the privacy noise)")
    cmd.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    cmd.add_argument("--json", action="store_true", help="no streaming: print one JSON object")
    cmd.set_defaults(run=_run_generate)


def _add_classify(cmd: argparse.ArgumentParser) -> None:
    cmd.description = (
        "Classify the prompt through a server whose model classifies (e.g. sentiment): the "
        "label and each label's probability to stdout, wire bits and exact ε to stderr."
    )
    _add_private_prompt(cmd)
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.set_defaults(run=_run_classify)


def _add_evaluate(cmd: argparse.ArgumentParser) -> None:
    from .evaluation import MAX_CONCURRENCY

    cmd.description = (
        "Classify every row of a labelled file (text<TAB>label, the label a name the server "
        "lists or its index; a header line is skipped) through the server, each privatized "
        "afresh, and report the accuracy with its 95 % interval, the confusion and the level's "
        "exact ε. No privacy budget is charged: the rows are evaluation data."
    )
    cmd.add_argument("file", type=Path, help="text<TAB>label per line, e.g. SST-2's dev.tsv")
    _add_server(cmd)
    cmd.add_argument(
        "--level",
        type=float,
        metavar="RATE",
        help="the server's calibrated level for this target attack rate (default its most private)",
    )
    cmd.add_argument(
        "--concurrency", type=int, default=8, help=f"requests in flight (at most {MAX_CONCURRENCY})"
    )
    cmd.add_argument(
        "--mechanism",
        choices=MECHANISMS,
        default="binomial",
        help="raw sends plain embeddings: the server's accuracy with NO privacy (a baseline)",
    )
    _add_payload_encoding(cmd)
    cmd.add_argument("--limit", type=int, help="the first N rows only")
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    import asyncio

    from .evaluation import evaluate_file

    _warn_if_raw(args)
    report = asyncio.run(
        evaluate_file(
            _config(args),
            args.file,
            level=args.level,
            mechanism=args.mechanism,
            concurrency=args.concurrency,
            limit=args.limit,
            progress=not args.json,
        )
    )
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(_evaluation_in_words(report))
    if report.failed:
        errors = ", ".join(f"{code} {n}" for code, n in report.errors.items())
        print(
            f"del-client: warning: {report.failed} of {report.attempted} rows were not answered "
            f"({errors}): the accuracy leaves them out",
            file=sys.stderr,
        )
        raise SystemExit(1)


def _evaluation_in_words(report) -> str:
    low, high = report.interval_95
    reported = report.level_utility
    claim = (
        "nothing for this level"
        if reported is None
        else f"{reported.metric} {reported.value:.1%} ({reported.measured_on})"
    )
    privacy = (
        f"{report.level_id}: μ {report.mu_token:.3g}, ε {report.epsilon_token:.3g} per token "
        f"at δ {report.delta:g}"
        if report.private
        else "NO PRIVACY (raw embeddings)"
    )
    labels = list(report.confusion)
    corner = "true / answered"
    width = max(len(corner), *(len(label) for label in labels))
    cells = [max(6, len(label)) for label in labels]
    table = [
        f"  {corner:<{width}}  "
        + "  ".join(f"{label:>{w}}" for label, w in zip(labels, cells, strict=True)),
        *(
            f"  {truth:<{width}}  "
            + "  ".join(
                f"{report.confusion[truth][label]:>{w}}"
                for label, w in zip(labels, cells, strict=True)
            )
            for truth in labels
        ),
    ]
    skipped = "" if report.header is None else f"; header line skipped: {report.header!r}"
    return (
        f"accuracy      {report.accuracy:.1%} of {report.answered} rows answered "
        f"({report.correct} right), 95 % interval {low:.1%}..{high:.1%}; "
        f"most frequent label {report.majority:.1%}\n"
        f"server says   {claim}\n"
        f"level         {privacy}; {round(report.bits_per_token, 2):g} payload bits per token\n"
        f"rows          {report.attempted} tried, {report.failed} not answered, "
        f"{report.elapsed_s:.1f} s{skipped}\n"
        f"confusion\n" + "\n".join(table)
    )


def _ledger_budget(args: argparse.Namespace):
    """The LedgerBudget the budget flags ask for, or None when none is given.

    --budget-epsilon sets the identity's limit; --identity or --ledger alone charge against
    the limit the ledger already holds for it. A budget flag that charged nothing would let
    the user believe the prompt was counted.
    """
    from .ledger import DEFAULT_IDENTITY, LedgerBudget, PrivacyLedger

    if all(v is None for v in (args.budget_epsilon, args.budget_delta, args.identity, args.ledger)):
        return None
    ledger = PrivacyLedger(args.ledger)
    identity = args.identity or DEFAULT_IDENTITY
    if args.budget_epsilon is not None:
        delta = DEFAULT_DELTA if args.budget_delta is None else args.budget_delta
        return LedgerBudget(ledger, identity=identity, epsilon=args.budget_epsilon, delta=delta)
    if args.budget_delta is not None:
        raise RequestOptionError("--budget-delta goes with --budget-epsilon: it is that limit's δ")
    entry = ledger.entry(identity)
    if entry is None:
        raise RequestOptionError(
            f"identity {identity!r} has no budget in {ledger.path} yet: "
            "add --budget-epsilon E to set its limit"
        )
    return LedgerBudget(ledger, identity=identity, epsilon=entry.epsilon_limit, delta=entry.delta)


def _shown(prompt: str, stream: TextIO) -> str:
    """The prompt as `generate` prints it before the continuation.

    Dimmed on a terminal, where the two would otherwise run together; as it is in a pipe (or
    with $NO_COLOR set), whose reader gets exactly prompt + continuation.
    """
    if stream.isatty() and not os.environ.get("NO_COLOR"):
        return f"{_DIM}{prompt}{_RESET}"
    return prompt


def _warn_if_raw(args: argparse.Namespace) -> None:
    if args.mechanism == "raw":
        print(
            "del-client: warning: NO PRIVACY: --mechanism raw sends raw embeddings; "
            "the server can read the prompt",
            file=sys.stderr,
        )


def _warn_if_no_better_than_nothing(result) -> None:
    """The level served spends privacy for less than sending nothing would give: say so."""
    if result.better_than_nothing is False:
        print(f"del-client: warning: {result.utility.warning(result.level_id)}", file=sys.stderr)


def _privacy_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of generate() and classify() that the privacy flags give."""
    return {
        "mu": args.mu,
        "level": args.level,
        "epsilon": args.epsilon,
        "delta": args.delta,
        "bits": args.bits,
        "mechanism": args.mechanism,
        "budget": _ledger_budget(args),
    }


def _run_classify(args: argparse.Namespace) -> None:
    from .client import Client

    _warn_if_raw(args)
    with Client(_config(args)) as client:
        result = client.classify(args.prompt, **_privacy_options(args))
    _warn_if_no_better_than_nothing(result)
    if args.json:
        print(json.dumps({"prompt": args.prompt, **result.to_dict()}))
        return
    ranked = sorted(result.probabilities.items(), key=lambda item: -item[1])
    print(result.label)
    print(
        f"labels        {', '.join(f'{label} {p:.1%}' for label, p in ranked)}\n"
        f"answer        after {result.timings.time_to_first_token_s:.3f} s "
        f"({result.timings.total_s:.2f} s in all), level {result.level_id or 'none'}\n"
        f"wire          {result.usage.bits_per_token:g} payload bits per prompt token "
        f"({result.mechanism}, {result.payload_encoding}); {result.client_wire_bytes_sent:,} "
        f"bytes sent for {result.usage.prompt_tokens} tokens\n"
        f"privacy       {result.privacy_note}",
        file=sys.stderr,
    )


def _run_generate(args: argparse.Namespace) -> None:
    from .client import Client

    _warn_if_raw(args)
    with Client(_config(args)) as client:
        generation = client.generate(
            args.prompt,
            **_privacy_options(args),
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            stop=args.stop,
        )
        if args.json:
            result = generation.collect()
            print(json.dumps({"prompt": args.prompt, **result.to_dict()}))
            _warn_if_no_better_than_nothing(result)
            return
        deltas = iter(generation)
        first = next(deltas, "")  # a refusal raises here, before anything is printed
        print(_shown(args.prompt, sys.stdout) + first, end="", flush=True)
        for delta in deltas:
            print(delta, end="", flush=True)
        print()
        result = generation.result
    _warn_if_no_better_than_nothing(result)
    usage, timings = result.usage, result.timings
    soft = _soft_prompt_in_words(result)
    print(
        f"finish        {result.finish_reason}: {usage.generated_tokens} tokens in "
        f"{timings.total_s:.2f} s (first after {timings.time_to_first_token_s:.3f} s)\n"
        f"wire          {usage.bits_per_token:g} payload bits per prompt token ({result.mechanism}, "
        f"{result.payload_encoding}); "
        f"{result.client_wire_bytes_sent:,} bytes sent for {usage.prompt_tokens} tokens\n"
        f"privacy       {result.privacy_note}\n"
        f"soft prompt   {soft}"
        + (f"\nreading       {READINGS[result.reading]}" if result.reading in READINGS else ""),
        file=sys.stderr,
    )


# Final.reading, where the particle reader read the prompt (the summary's last line).
READINGS = {
    "particle": "one draw of the prompt's posterior, decoded as tokens by the server's "
    "particle reader, continued after its prefix",
    "ignored": "NOT USED this time: the server's particle reader continued from its prefix "
    "alone (it does so with a probability fitted for this level, which the level's published "
    "utility includes)",
}


def _soft_prompt_in_words(result) -> str:
    """What the Final said about the soft prompt, for the summary."""
    if result.soft_prompt == "used":
        return f"level {result.level_id}'s, trained for μ = {result.soft_prompt_mu:g}"
    return {
        "no level": "none: these parameters are none of the server's levels (its soft prompts "
        "were trained for the levels' noise only)",
        "not trained": f"none: level {result.level_id} has no trained soft prompt",
        "raw": "none (raw mechanism)",
        "reader": "the particle reader's own prefix (no level soft prompt)",
    }.get(result.soft_prompt, "none" if result.soft_prompt_mu is None else "used")


def _add_manifest(cmd: argparse.ArgumentParser) -> None:
    _add_server(cmd)
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.set_defaults(run=_run_manifest)


def _run_manifest(args: argparse.Namespace) -> None:
    from .client import Client

    with Client(_config(args)) as client:
        manifest = client.manifest()
    if args.json:
        print(json.dumps(manifest.to_dict()))
        return
    print(f"server        del-server {manifest.server_version}")
    for m in manifest.models:
        levels = ", ".join(f"μ = {mu:g}" for mu in m.soft_prompt_mus) or "none"
        raw = (
            f"enabled, NO PRIVACY (bundle {m.raw_bundle_digest})"
            if m.raw_mechanism_enabled
            else "disabled"
        )
        task = "generation" if m.task == "generate" else f"classification ({m.task_name})"
        labels = f", labels {', '.join(m.labels)}" if m.labels else ""
        print(
            f"task          {task}{labels}\n"
            f"model         {m.model_id}: hidden size {m.hidden_size}, projection dim "
            f"{m.projection_dim}, clip {m.clip:.6g}\n"
            f"bits          {', '.join(map(str, m.supported_bits))}\n"
            f"encodings     {', '.join(m.payload_encodings)}\n"
            f"soft prompts  {levels}\n"
            f"limits        {m.max_prompt_tokens} prompt tokens, {m.max_new_tokens} new tokens\n"
            f"bundle        {m.client_bundle_digest}\n"
            f"raw           {raw}"
        )
        if m.task == "generate":
            print(f"reading       {_reading_in_words(m)}")
        for level in m.privacy_levels:
            print(
                f"level {level.id or level.target_attack_rate:<7} μ = {level.mu:.4g}, ε = "
                f"{level.epsilon_token:.4g} per token at δ = {level.delta:g}, b = {level.bits}"
                + (f", A = {level.scale:.6g}" if level.scale else "")
                + ("" if level.soft_prompt else ", no soft prompt")
                + f"\n              {level.summary()}"
            )
            if unread := level.unread_summary():
                print(f"              {unread}")
            if level.utility is not None:
                print(
                    f"              utility: {level.utility.summary()}\n"
                    f"                measured on {level.utility.measured_on}"
                )
            for attack in level.attacks:
                print(
                    f"                {attack.in_words:<48} {attack.rate:6.1%} "
                    f"(95 % {attack.low:.1%}–{attack.high:.1%}), content tokens "
                    f"{attack.content_rate:.1%}, half a prompt or more {attack.half_prompts:.0%}"
                )
            if level.measured_on:
                print(
                    f"              measured on {level.measured_prompts} prompts "
                    f"({level.measured_tokens} tokens) of {level.measured_on}"
                )


def _reading_in_words(model: ModelInfo) -> str:
    """How the server says it reads a private prompt (ModelInfo.prompt_reading)."""
    if model.prompt_reading == "particle":
        return (
            f"particle reader: the server decodes each prompt from its symbols "
            f"({model.reader_particles} particles) and continues one draw"
        )
    if model.prompt_reading == "front end":
        return "front end: the symbols decoded to the model's input embeddings"
    return "not announced (a server older than the field)"


def _add_budget(cmd: argparse.ArgumentParser) -> None:
    cmd.description = (
        "Read the privacy ledger: exact ε spent per identity (at the configured δ unless "
        "--delta), its limit, and what is left. --reset forgets one identity."
    )
    _add_ledger(cmd, identity="every identity")
    cmd.add_argument("--delta", type=float, help="state ε at this δ instead")
    cmd.add_argument("--reset", action="store_true", help="forget what --identity has spent")
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.set_defaults(run=_run_budget)


def _run_budget(args: argparse.Namespace) -> None:
    from .ledger import PrivacyLedger

    ledger = PrivacyLedger(args.ledger)
    if args.reset:
        if args.identity is None:
            raise RequestOptionError("--reset needs --identity: say whose spending to forget")
        found = ledger.reset(args.identity)
        print(f"{'reset' if found else 'no entry for'} {args.identity!r} in {ledger.path}")
        return
    entries = ledger.entries()
    if args.identity is not None:
        entries = {k: v for k, v in entries.items() if k == args.identity}
    rows = {}
    for identity, entry in entries.items():
        delta = args.delta or entry.delta
        spent = entry.spent(delta)
        rows[identity] = {
            **asdict(entry),
            "epsilon_spent": spent,
            "at_delta": delta,
            "epsilon_left": max(0.0, entry.epsilon_limit - spent) if delta == entry.delta else None,
        }
    if args.json:
        print(json.dumps({"ledger": str(ledger.path), "identities": rows}))
        return
    if not rows:
        print(f"no spending recorded in {ledger.path}")
    for identity, row in rows.items():
        left = "" if row["epsilon_left"] is None else f", {row['epsilon_left']:.4g} left"
        print(
            f"{identity:<16} ε = {row['epsilon_spent']:.4g} at δ = {row['at_delta']:g} of "
            f"{row['epsilon_limit']:g}{left} ({row['requests']} requests, updated {row['updated']})"
        )


def _add_loadtest(cmd: argparse.ArgumentParser) -> None:
    from .loadtest import DEFAULT_MU, MAX_CONCURRENCY, MAX_DURATION_S

    cmd.description = (
        f"Run --concurrency streams (at most {MAX_CONCURRENCY}) back to back for "
        f"--duration seconds (at most {MAX_DURATION_S:g}); in-flight requests then finish."
    )
    _add_server(cmd)
    cmd.add_argument("--concurrency", type=int, default=8)
    cmd.add_argument("--duration", type=float, default=10.0, help="seconds of new requests")
    cmd.add_argument("--max-requests", type=int, help="stop starting requests after this many")
    cmd.add_argument("--prompt", default="Once upon a time")
    cmd.add_argument("--mu", type=float, default=DEFAULT_MU)
    cmd.add_argument("--bits", type=int)
    _add_payload_encoding(cmd)
    cmd.add_argument("--max-new-tokens", type=int, default=32)
    cmd.add_argument("--temperature", type=float, default=1.0, help="0 decodes greedily")
    cmd.add_argument(
        "--ramp-up",
        type=float,
        default=0.0,
        help="seconds over which the streams start (0: all at once, so requests come in waves)",
    )
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.set_defaults(run=_run_loadtest)


def _run_loadtest(args: argparse.Namespace) -> None:
    import asyncio

    from .loadtest import run_load

    report = asyncio.run(
        run_load(
            _config(args),
            concurrency=args.concurrency,
            duration_s=args.duration,
            prompt=args.prompt,
            mu=args.mu,
            bits=args.bits,
            max_new_tokens=args.max_new_tokens,
            max_requests=args.max_requests,
            temperature=args.temperature,
            ramp_up_s=args.ramp_up,
        )
    )
    if args.json:
        print(json.dumps(report.to_dict()))
        return
    ms = lambda s: "-" if s is None else f"{1000 * s:.1f}"  # noqa: E731
    errors = ", ".join(f"{code} {n}" for code, n in report.errors.items()) or "none"
    print(
        f"load          {report.concurrency} streams for {report.duration_s:g} s against "
        f"{report.target} ({report.elapsed_s:.1f} s with the tail)\n"
        f"requests      {report.requests} started, {report.ok} OK, errors: {errors}, "
        f"lost {report.lost}\n"
        f"throughput    {report.throughput_rps:.2f} requests/s, {report.tokens_per_s:.1f} tokens/s\n"
        f"TTFT ms       p50 {ms(report.ttft_s['p50'])}  p90 {ms(report.ttft_s['p90'])}  "
        f"p99 {ms(report.ttft_s['p99'])}\n"
        f"e2e ms        p50 {ms(report.e2e_s['p50'])}  p90 {ms(report.e2e_s['p90'])}  "
        f"p99 {ms(report.e2e_s['p99'])}\n"
        f"client CPU    {report.cpu_s:.1f} s (this process, all threads)"
    )


# Each command: its line in `del-client --help`, and what declares its options.
COMMANDS = {
    "generate": (
        "continue a prompt through a server; the prompt leaves this machine privatized",
        _add_generate,
    ),
    "classify": (
        "label a prompt through a server whose model classifies; the prompt leaves privatized",
        _add_classify,
    ),
    "evaluate": (
        "accuracy of a server's classification level on a labelled file of your own",
        _add_evaluate,
    ),
    "manifest": ("what a server serves: model, limits, bundle digests", _add_manifest),
    "privacy": (
        "explain a privacy setting: A, q, bits per token, exact ε per token and per prompt",
        _add_privacy,
    ),
    "bench-codec": (
        "measure encode/decode throughput of the codec on this machine",
        _add_bench_codec,
    ),
    "budget": ("what each identity has spent from its persistent privacy budget", _add_budget),
    "loadtest": (
        "concurrent private generations against a server: throughput, latency, errors",
        _add_loadtest,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="del-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Command)
    for name, (summary, declare) in COMMANDS.items():
        sub.add_parser(name, help=summary, declare=declare)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except DELError as exc:
        print(f"del-client: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None  # the stream was cancelled on the way out
