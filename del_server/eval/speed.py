"""Speed: the existing benchmarks, plus latency samples for the distribution plots.

codec       del_client.bench.measure_codec at this adapter's (k, b) and at k = 128
end to end  del_server.tools.bench.run_benchmark: in-process engine vs the SDK through gRPC
            (medians), and aggregate tokens/s at 1, 4 and 16 concurrent streams; it
            serves the training-free PCA default, so the soft prompt is not in it
latency     every time to first token and every gap between streamed deltas, through
            gRPC against the server with the trained adapter (soft prompt included), at
            each concurrency: the distributions behind the medians
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from del_client import Client, ClientConfig
from del_client.bench import measure_codec

from ..paths import shown
from ..tools.bench import BITS, MU, PROMPT, run_benchmark
from .context import EvalContext

SEVEN_B_PROJECTION_DIM = 128


def _stream_times(target: str, new_tokens: int, cache_dir: Path) -> tuple[float, list[float]]:
    """(time to first delta, gaps between deltas) of one greedy generation, in seconds."""
    with Client(ClientConfig(target=target, bundle_cache_dir=cache_dir)) as client:
        client.bundle()  # fetched once, outside the timing
        started = time.perf_counter()
        arrivals = [
            time.perf_counter()
            for _ in client.generate(
                PROMPT, mu=MU, bits=BITS, max_new_tokens=new_tokens, temperature=0
            )
        ]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return (arrivals[0] - started if arrivals else float("nan")), gaps


def distribution(seconds: list[float]) -> dict:
    """Every percentile (0..100) in ms: the whole distribution in 101 numbers, so eval.json
    stays small however many samples there were."""
    if not seconds:
        return {"samples": 0, "mean_ms": None, "percentiles_ms": []}
    ms = 1000 * np.asarray(seconds)
    return {
        "samples": len(seconds),
        "mean_ms": float(ms.mean()),
        "percentiles_ms": [round(float(v), 4) for v in np.percentile(ms, np.arange(101))],
    }


def latency_samples(ctx: EvalContext, target: str, cache_dir: Path) -> list[dict]:
    """For each concurrency c: c streams at once, `latency_requests` rounds of them."""
    config = ctx.config
    samples = []
    for streams in tqdm(config.concurrency, desc="speed: latency samples", unit="level"):
        first, gaps = [], []
        with ThreadPoolExecutor(streams) as pool:
            for _ in range(config.latency_requests):
                runs = pool.map(
                    lambda _: _stream_times(target, config.bench_new_tokens, cache_dir),
                    range(streams),
                )
                for ttft, stream_gaps in runs:
                    first.append(ttft)
                    gaps += stream_gaps
        samples.append(
            {
                "streams": streams,
                "requests": len(first),
                "time_to_first_token": distribution(first),
                "inter_token_latency": distribution(gaps),
            }
        )
    return samples


def speed_stage(ctx: EvalContext, target: str, cache_dir: Path) -> dict:
    config, adapter = ctx.config, ctx.adapter
    codec = [
        asdict(measure_codec(dim=dim, bits=config.bits, tokens=config.codec_tokens))
        for dim in (adapter.projection_dim, SEVEN_B_PROJECTION_DIM)
    ]
    e2e = run_benchmark(
        model=config.model,
        new_tokens=config.bench_new_tokens,
        repeats=config.bench_repeats,
        cache_dir=cache_dir,
    )
    return {
        "codec": codec,
        "end_to_end": {**e2e, "model": shown(e2e["model"])},  # no machine's layout
        "latency": latency_samples(ctx, target, cache_dir),
        "prompt": PROMPT,
        "mu": MU,
        "new_tokens": config.bench_new_tokens,
    }
