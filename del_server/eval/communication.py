"""Bits per token and bytes on the wire: measured through the real gRPC path, and computed.

Measured: real generations by the SDK's `Client` against a real server on loopback, at each
calibrated level with packed frames (`del@`) and entropy-coded ones (`del-ans@`), and with the
raw (no privacy, fp32) mechanism, on held-out prompts. The server's own count of the stream
(`Usage`: gRPC messages + 5-byte prefixes) gives the bytes each way; the payload bits are the
packed symbols alone, or the coded bytes sent.

Computed: raw embeddings at the model's hidden size in fp32 and fp16, and a 7B-class model
from its dimensions (d = 4096, k = 128, the same b). The floor an ideal entropy coder would
reach is the empirical entropy of the symbols actually produced (per coordinate, summed over
the k coordinates), beside DESIGN §3's binomial approximation ½·log2(π·e·K/2) per coordinate.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
from tqdm import tqdm

from del_client import Client, ClientConfig
from del_client.codec import packed_size
from del_client.results import GenerationResult

from .context import EvalContext
from .methods import PRIVATE_FAMILIES, Method

SEVEN_B = {"hidden_size": 4096, "projection_dim": 128}
WIRE_NEW_TOKENS = 8  # a few tokens back, so the downstream bytes per token are measured too


def symbol_entropy_bits(symbols: np.ndarray, alphabet: int) -> float:
    """Σ over coordinates of the empirical entropy of that coordinate's symbols (bits/token)."""
    total = 0.0
    for column in symbols.T:
        p = np.bincount(column, minlength=alphabet) / column.size
        p = p[p > 0]
        total -= float(np.sum(p * np.log2(p)))
    return total


def binomial_entropy_approximation(bits: int) -> float:
    """DESIGN §3: a binomial symbol with K = 2^b − 1 draws near p = 1/2 carries about
    ½·log2(π·e·K/2) bits."""
    return 0.5 * math.log2(math.pi * math.e * ((1 << bits) - 1) / 2)


def _mean(results: list[GenerationResult], field) -> float:
    return statistics.fmean(field(r) for r in results)


def _summarise(results: list[GenerationResult]) -> dict:
    return {
        "requests": len(results),
        "prompt_tokens": _mean(results, lambda r: r.usage.prompt_tokens),
        "upstream_bytes_per_request": _mean(results, lambda r: r.usage.wire_bytes_received),
        "downstream_bytes_per_request": _mean(results, lambda r: r.usage.wire_bytes_sent),
        "payload_bits_per_token": _mean(results, lambda r: r.usage.bits_per_token),
        "wire_bits_per_prompt_token": _mean(
            results, lambda r: 8 * r.usage.wire_bytes_received / r.usage.prompt_tokens
        ),
        "downstream_bytes_per_generated_token": _mean(
            results, lambda r: r.usage.wire_bytes_sent / max(1, r.usage.generated_tokens)
        ),
        "client_counted_equals_server": all(
            r.client_wire_bytes_sent == r.usage.wire_bytes_received for r in results
        ),
    }


def measure_wire(ctx: EvalContext, target: str, cache_dir: Path) -> dict:
    """Real requests through gRPC: each DEL level, packed and coded, and the raw baseline, same
    prompts."""
    windows = ctx.split.validation.head(ctx.config.wire_requests)
    prompts = [ctx.loaded.tokenizer.decode(ids) for ids in windows.prompts.tolist()]
    runs = []
    for encoding, name in (("packed", "del"), ("ans", "del-ans")):
        for lv in ctx.adapter.calibration:
            privacy = {"mu": lv.mu, "bits": lv.bits}
            runs.append((f"{name}@{lv.target_attack_rate:g}", encoding, privacy))
    runs.append(("raw_fp32", "packed", {"mechanism": "raw"}))
    measured = {}
    for key, encoding, privacy in tqdm(runs, desc="communication: gRPC", unit="level"):
        config = ClientConfig(target=target, bundle_cache_dir=cache_dir, payload_encoding=encoding)
        with Client(config) as client:
            results = [
                client.generate(
                    prompt, **privacy, max_new_tokens=WIRE_NEW_TOKENS, temperature=0
                ).collect()
                for prompt in prompts
            ]
        measured[key] = _summarise(results)
    return measured


def communication_stage(
    ctx: EvalContext, methods: list[Method], target: str, cache_dir: Path
) -> dict:
    config, adapter = ctx.config, ctx.adapter
    d, k, b = adapter.hidden_size, adapter.projection_dim, config.bits
    tokens = ctx.attack_prompts().reshape(-1)
    rng = np.random.default_rng(config.seed + 2)
    entropy = {}
    for method in methods:
        if method.family in PRIVATE_FAMILIES and not method.server_side:
            mechanism = method.mechanism
            symbols = mechanism.privatize(ctx.table(method.adapter)[tokens], rng)
            entropy[method.key] = {
                "payload_bits_per_token": mechanism.bits_per_token,
                "entropy_bits_per_token": symbol_entropy_bits(symbols, mechanism.alphabet),
                "tokens": int(tokens.size),
            }
    approx = binomial_entropy_approximation(b)
    seven_b_d, seven_b_k = SEVEN_B["hidden_size"], SEVEN_B["projection_dim"]
    return {
        "bits": b,
        "computed_bits_per_token": {
            "this_model": {
                "hidden_size": d,
                "projection_dim": k,
                "raw_fp32": 32 * d,
                "raw_fp16": 16 * d,
                "del": k * b,
                "del_full": d * b,
                "gaussian": k * b,
                "no_prompt": 0,
                "entropy_approximation_del": k * approx,
            },
            "7b_class": {
                **SEVEN_B,
                "raw_fp32": 32 * seven_b_d,
                "raw_fp16": 16 * seven_b_d,
                "del": seven_b_k * b,
                "entropy_approximation_del": seven_b_k * approx,
                "del_payload_bytes_32_token_prompt": packed_size(32 * seven_b_k, b),
                "raw_fp16_bytes_32_token_prompt": 32 * seven_b_d * 2,
            },
        },
        "symbol_entropy": entropy,
        "wire": measure_wire(ctx, target, cache_dir),
        "wire_new_tokens": WIRE_NEW_TOKENS,
    }
