"""What the client costs on this machine: codec throughput and command start-up.

Codec: privatize + pack + frame (encode) and parse + unpack + decode (decode), for both payload
encodings: packed (b bits a symbol) and ans (entropy-coded with the public symbol model). Inputs
are synthetic Gaussian embeddings with standard deviation clip/2, since the cost of the codec
does not depend on what the embeddings mean; the symbol model is built, as a server's is from
its bundle, from a synthetic vocabulary of VOCABULARY such rows. Each figure is the best of
`repeats` runs on one thread, as `timeit` reports, so it measures the code rather than the
machine's other load. The entropy floor is the empirical entropy of the symbols (all
coordinates pooled): what an ideal coder with their true law would reach.

Start-up: the wall time of `del-client --help` and `del-client manifest`, each in a fresh
interpreter as from a shell, best of several runs. Without a server to ask, manifest is timed
against a loopback port that refuses the connection: its imports and channel, plus one refused
connection where a server would answer one loopback round trip.

`python -m del_client.bench --out reports` (what `make bench` runs) writes bench_codec.json,
bench_codec.md, bench_cli.json and bench_cli.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .codec import FrameAssembler, encode_frames
from .mechanism import BinomialQuantizer, PrivacySpec
from .parameters import check_count
from .proto import frames_pb2
from .symbol_model import SymbolModel

BENCH_MU = 20.0
BENCH_CLIP = 1.0
PROMPT_TOKENS = 32
VOCABULARY = 4096  # rows of the synthetic table the symbol model is built from
# The longest a user should wait for each command's first line, in seconds.
STARTUP_GOALS_S = {"--help": 0.5, "manifest": 1.0}


@dataclass(frozen=True)
class CodecBenchmark:
    dim: int
    bits: int
    tokens: int
    encode_tokens_per_s: float  # packed frames
    decode_tokens_per_s: float
    payload_bits_per_token: int
    wire_bits_per_token_prompt: float  # a 32-token prompt: one frame, header excluded
    wire_bits_per_token_bulk: float  # all `tokens` in 64 KiB frames
    symbol_entropy_bits_per_token: float  # the floor an ideal entropy coder would reach
    raw_fp16_bits_per_token_at_dim: int  # an unprojected fp16 vector of the same width
    ans_encode_tokens_per_s: float  # entropy-coded frames, the symbol model already built
    ans_decode_tokens_per_s: float
    ans_payload_bits_per_token: float  # the coded bytes of all `tokens`, in 64 KiB frames
    ans_wire_bits_per_token_prompt: float
    ans_wire_bits_per_token_bulk: float
    model_cross_entropy_bits_per_token: float  # what an ideal coder with the model would reach
    model_build_s: float  # the symbol model from a VOCABULARY-row table (once per mechanism)

    @property
    def ans_over_entropy(self) -> float:
        """Coded frames (a 32-token prompt, on the wire) over the entropy floor."""
        return self.ans_wire_bits_per_token_prompt / self.symbol_entropy_bits_per_token


def _best_seconds(run, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _wire_bits_per_token(
    symbols: np.ndarray, spec: PrivacySpec, model: SymbolModel | None = None
) -> float:
    frames = encode_frames(symbols, spec, model=model)
    return 8 * sum(len(f.SerializeToString()) for f in frames) / symbols.shape[0]


def _throughput(
    z: np.ndarray, quantizer: BinomialQuantizer, model: SymbolModel | None, repeats: int
) -> tuple[float, float, list[bytes]]:
    """(encode tokens/s, decode tokens/s, the frames) of one encoding."""
    spec, tokens = quantizer.spec, z.shape[0]

    def encode() -> list[bytes]:
        frames = encode_frames(quantizer.privatize(z), spec, model=model)
        return [f.SerializeToString() for f in frames]

    wire = encode()

    def decode() -> np.ndarray:
        assembler = FrameAssembler(spec, max_tokens=tokens, model=model)
        for blob in wire:
            assembler.add(frames_pb2.Frame.FromString(blob))
        return assembler.embeddings()

    decode()
    return tokens / _best_seconds(encode, repeats), tokens / _best_seconds(decode, repeats), wire


def measure_codec(*, dim: int, bits: int, tokens: int, repeats: int = 3) -> CodecBenchmark:
    tokens = check_count("tokens", tokens, 1)  # a rate over no tokens would divide by zero
    spec = PrivacySpec.from_mu(mu=BENCH_MU, dim=dim, bits=bits, clip=BENCH_CLIP)
    quantizer = BinomialQuantizer(spec)
    rng = np.random.default_rng(0)
    z = rng.normal(0, BENCH_CLIP / 2, (tokens, dim)).astype(np.float32)
    vocabulary = rng.normal(0, BENCH_CLIP / 2, (VOCABULARY, dim)).astype(np.float32)
    SymbolModel.from_table(vocabulary[:1], spec)  # compile the kernels outside the timing
    start = time.perf_counter()
    model = SymbolModel.from_table(vocabulary, spec)
    model_build_s = time.perf_counter() - start
    quantizer.privatize(z[:1])
    encode_rate, decode_rate, _ = _throughput(z, quantizer, None, repeats)
    ans_encode_rate, ans_decode_rate, ans_wire = _throughput(z, quantizer, model, repeats)
    symbols = quantizer.privatize(z)
    counts = np.bincount(symbols.reshape(-1), minlength=spec.levels + 1) / symbols.size
    entropy = -float(np.sum(counts[counts > 0] * np.log2(counts[counts > 0])))
    coded_bytes = sum(len(frames_pb2.Frame.FromString(blob).payload) for blob in ans_wire)
    return CodecBenchmark(
        dim=dim,
        bits=bits,
        tokens=tokens,
        encode_tokens_per_s=encode_rate,
        decode_tokens_per_s=decode_rate,
        payload_bits_per_token=spec.bits_per_token,
        wire_bits_per_token_prompt=_wire_bits_per_token(symbols[:PROMPT_TOKENS], spec),
        wire_bits_per_token_bulk=_wire_bits_per_token(symbols, spec),
        symbol_entropy_bits_per_token=entropy * dim,
        raw_fp16_bits_per_token_at_dim=16 * dim,
        ans_encode_tokens_per_s=ans_encode_rate,
        ans_decode_tokens_per_s=ans_decode_rate,
        ans_payload_bits_per_token=8 * coded_bytes / tokens,
        ans_wire_bits_per_token_prompt=_wire_bits_per_token(symbols[:PROMPT_TOKENS], spec, model),
        ans_wire_bits_per_token_bulk=_wire_bits_per_token(symbols, spec, model),
        model_cross_entropy_bits_per_token=model.cross_entropy_bits(symbols) / tokens,
        model_build_s=model_build_s,
    )


@dataclass(frozen=True)
class StartupBenchmark:
    command: str  # as typed after `del-client`
    best_s: float
    median_s: float
    runs: int
    goal_s: float


def measure_startup(args: list[str], *, goal_s: float, runs: int = 5) -> StartupBenchmark:
    """Wall time of `del-client ARGS` in a fresh interpreter (what the console script runs)."""
    command = [sys.executable, "-c", "from del_client.cli import main; main()", *args]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 2):  # 2: a refusal the command explains, not a crash
            raise RuntimeError(f"del-client {' '.join(args)} failed:\n{done.stderr}")
    return StartupBenchmark(" ".join(args), min(times), statistics.median(times), runs, goal_s)


def measure_cli(server: str | None, *, runs: int = 5) -> list[StartupBenchmark]:
    """--help, and manifest against `server` or else a loopback port that refuses connections."""
    with socket.socket() as unused:  # bound, never listening: connections to it are refused
        unused.bind(("127.0.0.1", 0))
        target = server or f"127.0.0.1:{unused.getsockname()[1]}"
        manifest = ["manifest", "--server", target, "--retries", "0"]
        return [
            measure_startup(["--help"], goal_s=STARTUP_GOALS_S["--help"], runs=runs),
            measure_startup(manifest, goal_s=STARTUP_GOALS_S["manifest"], runs=runs),
        ]


def _cli_markdown(results: list[StartupBenchmark]) -> str:
    lines = [
        "# del-client start-up",
        "",
        f"Wall time of each command in a fresh interpreter, best and median of {results[0].runs} "
        f"runs. Machine: {platform.processor() or platform.machine()}. Without a server to ask, "
        "manifest is refused by a loopback port: start-up plus one refused connection.",
        "",
        "| command | best s | median s | goal s |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| `del-client {r.command}` | {r.best_s:.3f} | {r.median_s:.3f} | {r.goal_s:g} |"
        )
    return "\n".join(lines) + "\n"


def _markdown(results: list[CodecBenchmark]) -> str:
    lines = [
        "# Codec benchmark",
        "",
        f"Privatize + pack or code + frame (encode) and parse + unpack or decode + dequantize "
        f"(decode), one thread, best of 3; mu={BENCH_MU}, synthetic Gaussian inputs, the symbol "
        f"model of a {VOCABULARY}-row synthetic table. Machine: "
        f"{platform.processor() or platform.machine()}.",
        "",
        "| k | b | encode tok/s packed / ans | decode tok/s packed / ans "
        "| payload bits/tok packed / ans | wire bits/tok, 32-token prompt, packed / ans "
        "| wire bits/tok, bulk, packed / ans | model cross-entropy | entropy floor "
        "| ans / floor | model build s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.dim} | {r.bits} "
            f"| {r.encode_tokens_per_s:,.0f} / {r.ans_encode_tokens_per_s:,.0f} "
            f"| {r.decode_tokens_per_s:,.0f} / {r.ans_decode_tokens_per_s:,.0f} "
            f"| {r.payload_bits_per_token} / {r.ans_payload_bits_per_token:.1f} "
            f"| {r.wire_bits_per_token_prompt:.1f} / {r.ans_wire_bits_per_token_prompt:.1f} "
            f"| {r.wire_bits_per_token_bulk:.1f} / {r.ans_wire_bits_per_token_bulk:.1f} "
            f"| {r.model_cross_entropy_bits_per_token:.1f} "
            f"| {r.symbol_entropy_bits_per_token:.1f} | {r.ans_over_entropy:.3f} "
            f"| {r.model_build_s:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the DEL codec over a grid of k and b.")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--server", help="time `del-client manifest` against this server")
    args = parser.parse_args()
    grid = [(dim, bits) for dim in (16, 64, 128) for bits in (1, 2, 4, 8)]
    results = [
        measure_codec(dim=dim, bits=bits, tokens=args.tokens)
        for dim, bits in tqdm(grid, desc="codec benchmark", unit="config")
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_codec.json").write_text(
        json.dumps([asdict(r) for r in results], indent=2) + "\n"
    )
    (args.out / "bench_codec.md").write_text(_markdown(results))
    print(_markdown(results))
    startup = measure_cli(args.server)
    (args.out / "bench_cli.json").write_text(
        json.dumps([asdict(r) for r in startup], indent=2) + "\n"
    )
    (args.out / "bench_cli.md").write_text(_cli_markdown(startup))
    print(_cli_markdown(startup))


if __name__ == "__main__":
    main()
