"""`del-client loadtest`: N concurrent private generations for S seconds, and what came of them.

    report = asyncio.run(run_load(ClientConfig("localhost:50051"), concurrency=8, duration_s=10))
    print(report.to_dict())   # throughput, TTFT and end-to-end percentiles, errors by status

`concurrency` workers share one AsyncClient (one HTTP/2 connection) and each runs one request
after another, every one privatized afresh, as real users would. They start together, so
identical requests then arrive in waves; `ramp_up_s` starts worker i after i/concurrency of
it instead, which spreads their requests over time as independent users' would. Workers
start no request once `duration_s` has passed (or `max_requests` have started); requests in flight then finish,
bounded by ClientConfig.deadline_s. Every started request ends in exactly one bucket, OK or an
error named by its gRPC status (DEL's exception class for client-side refusals), so `lost`
(started minus accounted for) is 0 unless something is badly wrong.

Time to first token is measured here, from the start of the call (privatization included) to
the first text delta, which is what a user waits for; the server's own figure, from its
receipt of the End marker, is in each result's timings and in its metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from .aio import AsyncClient
from .codec import encode_frames
from .config import ClientConfig
from .errors import DELError, RequestOptionError, ServerError
from .mechanism import BinomialQuantizer, PrivacySpec
from .parameters import DEFAULT_BITS
from .symbol_model import model_for

MAX_CONCURRENCY = 1024
MAX_DURATION_S = 3600.0
DEFAULT_MU = 10.0  # the privacy of the load: what a request costs, not a recommended level
PERCENTILES = (50, 90, 99)


def latency_summary(values_s: list[float]) -> dict[str, float | None]:
    """p50/p90/p99, mean and max of `values_s` in seconds; None each when there are none."""
    if not values_s:
        return {**{f"p{p}": None for p in PERCENTILES}, "mean": None, "max": None}
    values = np.asarray(values_s, dtype=np.float64)
    summary = {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    return {**summary, "mean": float(values.mean()), "max": float(values.max())}


@dataclass(frozen=True)
class LoadReport:
    target: str
    concurrency: int
    duration_s: float  # asked for
    elapsed_s: float  # from the first request to the last answer
    max_new_tokens: int
    mu: float
    requests: int  # started
    ok: int
    errors: dict[str, int]  # by gRPC status name (or DEL exception class)
    lost: int  # started but neither OK nor an error: must be 0
    throughput_rps: float  # OK requests per second
    tokens_per_s: float  # generated tokens per second, OK requests only
    cpu_s: float  # this process's CPU time over the load (all its threads): the load's own cost
    text_deltas: int  # text deltas received, OK requests only (tokens / deltas: per message)
    ttft_s: dict[str, float | None] = field(default_factory=dict)
    e2e_s: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _warm_up(bundle, mu: float, bits: int | None) -> None:
    """Load the codec's compiled kernels and the entropy coder now (numba: seconds on first
    use in a process) and compute the load's symbol model, not in the first timed request; on
    this side only, so the server sees no extra request."""
    spec = PrivacySpec.from_mu(
        mu=mu, dim=bundle.projection_dim, bits=bits or DEFAULT_BITS, clip=bundle.clip
    )
    symbols = BinomialQuantizer(spec).privatize(bundle.embed(bundle.encode("warm up")))
    list(encode_frames(symbols, spec))
    list(encode_frames(symbols, spec, model=model_for(bundle, spec)))


def _check(concurrency: int, duration_s: float, max_requests: int | None) -> None:
    """The load is bounded in streams and time, whoever asks for it."""
    if not (isinstance(concurrency, int) and 1 <= concurrency <= MAX_CONCURRENCY):
        raise RequestOptionError(
            f"concurrency must be in 1..{MAX_CONCURRENCY}, got {concurrency!r}"
        )
    if not 0 < duration_s <= MAX_DURATION_S:
        raise RequestOptionError(
            f"duration must be in (0, {MAX_DURATION_S:g}] s, got {duration_s!r}"
        )
    if max_requests is not None and max_requests < 1:
        raise RequestOptionError(f"max_requests must be >= 1, got {max_requests!r}")


async def run_load(
    config: ClientConfig,
    *,
    concurrency: int,
    duration_s: float,
    prompt: str = "Once upon a time",
    mu: float = DEFAULT_MU,
    bits: int | None = None,
    max_new_tokens: int = 32,
    max_requests: int | None = None,
    temperature: float = 1.0,
    ramp_up_s: float = 0.0,
) -> LoadReport:
    """Run the load and report; the manifest and bundle are fetched and the codec warmed up
    first, outside the timing."""
    _check(concurrency, duration_s, max_requests)
    ttfts: list[float] = []
    e2es: list[float] = []
    errors: Counter[str] = Counter()
    tokens = 0
    deltas = 0
    started = 0
    async with AsyncClient(config) as client:
        _warm_up(await client.bundle(), mu, bits)
        begin = time.perf_counter()
        cpu_begin = time.process_time()
        stop_at = begin + duration_s

        async def worker(index: int) -> None:
            nonlocal started, tokens, deltas
            await asyncio.sleep(index * ramp_up_s / concurrency)
            while time.perf_counter() < stop_at and (
                max_requests is None or started < max_requests
            ):
                started += 1
                t0 = time.perf_counter()
                first = None
                received = 0
                try:
                    generation = client.generate(
                        prompt,
                        mu=mu,
                        bits=bits,
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                    )
                    async for _ in generation:
                        first = first or time.perf_counter()
                        received += 1
                    done = time.perf_counter()
                except ServerError as exc:
                    errors[exc.code] += 1
                    continue
                except DELError as exc:  # refused on this side (a limit, a protocol breach)
                    errors[type(exc).__name__] += 1
                    continue
                ttfts.append((first or done) - t0)
                e2es.append(done - t0)
                tokens += generation.result.usage.generated_tokens
                deltas += received

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - begin
        cpu = time.process_time() - cpu_begin
    ok = len(e2es)
    return LoadReport(
        target=config.target,
        concurrency=concurrency,
        duration_s=duration_s,
        elapsed_s=elapsed,
        max_new_tokens=max_new_tokens,
        mu=mu,
        requests=started,
        ok=ok,
        errors=dict(sorted(errors.items())),
        lost=started - ok - sum(errors.values()),
        throughput_rps=ok / elapsed,
        tokens_per_s=tokens / elapsed,
        cpu_s=cpu,
        text_deltas=deltas,
        ttft_s=latency_summary(ttfts),
        e2e_s=latency_summary(e2es),
    )
