"""`del-client`: explain a privacy setting, measure the codec (and, later, talk to a server)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from .errors import DELError


def _add_privacy(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "privacy",
        help="explain a privacy setting: A, q, bits per token, exact ε per token and per prompt",
        description="Derive the quantizer from a privacy target and report its exact guarantee.",
    )
    target = cmd.add_mutually_exclusive_group(required=True)
    target.add_argument("--mu", type=float, help="per-token Gaussian-DP level (paper calibration)")
    target.add_argument("--epsilon", type=float, help="per-token ε at --delta (exact)")
    cmd.add_argument("--dim", type=int, required=True, help="projection dim k")
    cmd.add_argument("--bits", type=int, default=4, help="bits per coordinate b, 1..8")
    cmd.add_argument("--clip", type=float, required=True, help="clip bound c")
    cmd.add_argument("--tokens", type=int, default=32, help="prompt length T")
    cmd.add_argument("--delta", type=float, default=1e-5, help="δ at which ε is reported")
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


def _add_bench_codec(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "bench-codec",
        help="measure encode/decode throughput of the codec on this machine",
        description="Like `openssl speed`: privatize+pack and unpack+decode throughput, 1 thread.",
    )
    cmd.add_argument("--dim", type=int, default=128)
    cmd.add_argument("--bits", type=int, default=4)
    cmd.add_argument("--tokens", type=int, default=100_000)
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.set_defaults(run=_run_bench_codec)


def _run_bench_codec(args: argparse.Namespace) -> None:
    from .bench import measure_codec

    result = measure_codec(dim=args.dim, bits=args.bits, tokens=args.tokens)
    if args.json:
        print(json.dumps(asdict(result)))
        return
    print(
        f"k={result.dim} b={result.bits}: encode {result.encode_tokens_per_s:,.0f} tokens/s, "
        f"decode {result.decode_tokens_per_s:,.0f} tokens/s, "
        f"{result.wire_bits_per_token_prompt:.1f} wire bits per token (32-token prompt)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="del-client", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_privacy(sub)
    _add_bench_codec(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except DELError as exc:
        print(f"del-client: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
