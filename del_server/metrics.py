"""Every Prometheus metric of the server, and nothing else (DESIGN §8).

Names follow vLLM's stems with a `del_` prefix so existing dashboards carry over; counters get
`_total` appended by the client library on export. Labels are low-cardinality (status code,
finish reason, mechanism, payload encoding, soft-prompt level) and initialised up front. Each server owns one
registry, so two servers can share a test process.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

from del_client.codec import ENCODINGS

from .sampling import FinishReason

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
RATIO_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
EPSILON_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
MECHANISMS = ("binomial", "raw")
STATUS_CODES = (
    "OK",
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "RESOURCE_EXHAUSTED",
    "UNAUTHENTICATED",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "UNAVAILABLE",
    "INTERNAL",
)


def build_1_2_5_buckets(maximum: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `maximum` (vLLM's token-count buckets)."""
    buckets, exponent = [], 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > maximum:
                return buckets
            buckets.append(value)
        exponent += 1


@dataclass(frozen=True)
class RequestStats:
    """What one finished (or failed) request contributes; filled by the service."""

    code: str
    mechanism: str
    level: str  # soft-prompt level used ("none" if none)
    label: str | None = None  # classify: the label answered
    encoding: str = "packed"  # the frames' payload encoding: "packed" or "ans" (coded)
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    frames: int = 0
    wire_received_bytes: int = 0
    wire_sent_bytes: int = 0
    payload_bits: int = 0
    raw_bits_per_token: int = 0  # bf16 of the full hidden size: the compression baseline
    time_to_first_token_s: float | None = None
    inter_token_latencies_s: tuple[float, ...] = ()
    e2e_latency_s: float | None = None
    epsilon_prompt: float | None = None


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        max_tokens: int,
        levels: list[str],
        task: str = "generate",
        model: str = "",
        labels: tuple[str, ...] = (),
    ) -> None:
        self.registry = registry
        token_buckets = build_1_2_5_buckets(max_tokens)
        r = {"registry": registry}
        self.requests = Counter(
            "del_requests", "Generate or Classify streams by gRPC status code", ["code"], **r
        )
        # The server's one task, as an info metric (the idiom of build_info): a dashboard
        # joins it to any other series by job and instance.
        self.info = Info("del_server", "What this server serves", **r)
        self.classified = Counter(
            "del_classified", "Classify answers by the label answered", ["label"], **r
        )
        self.request_success = Counter(
            "del_request_success", "Finished requests by finish reason", ["finished_reason"], **r
        )
        self.running = Gauge("del_num_requests_running", "Sequences being generated", **r)
        self.waiting = Gauge("del_num_requests_waiting", "Requests queued for the engine", **r)
        self.kv_cache = Gauge(
            "del_kv_cache_bytes",
            "KV cache of the running sequences: used (padding included) or allocated",
            ["kind"],
            **r,
        )
        self.streams_open = Gauge(
            "del_num_streams_open", "Generate streams holding a slot (reading or generating)", **r
        )
        self.ttft = Histogram(
            "del_time_to_first_token_seconds",
            "From End marker to first token",
            buckets=LATENCY_BUCKETS_S,
            **r,
        )
        self.itl = Histogram(
            "del_inter_token_latency_seconds",
            "Between consecutive tokens",
            buckets=LATENCY_BUCKETS_S,
            **r,
        )
        self.e2e = Histogram(
            "del_e2e_request_latency_seconds",
            "From header to final message",
            buckets=LATENCY_BUCKETS_S,
            **r,
        )
        self.prompt_tokens = Counter("del_prompt_tokens", "Prompt tokens received", **r)
        self.generation_tokens = Counter("del_generation_tokens", "Tokens generated", **r)
        self.request_prompt_tokens = Histogram(
            "del_request_prompt_tokens", "Prompt tokens per request", buckets=token_buckets, **r
        )
        self.request_generation_tokens = Histogram(
            "del_request_generation_tokens",
            "Generated tokens per request",
            buckets=token_buckets,
            **r,
        )
        self.wire_received = Counter(
            "del_wire_received_bytes", "gRPC message bytes received on Generate streams", **r
        )
        self.wire_sent = Counter(
            "del_wire_sent_bytes", "gRPC message bytes sent on Generate streams", **r
        )
        self.payload_bits = Counter(
            "del_payload_bits", "Privatized payload bits received", ["mechanism"], **r
        )
        self.frames = Counter("del_frames_received", "Frames received", ["mechanism"], **r)
        self.by_encoding = Counter(
            "del_requests_by_payload_encoding",
            "Generate streams by their frames' payload encoding (packed, or ans: entropy-coded)",
            ["encoding"],
            **r,
        )
        self.bits_per_token = Histogram(
            "del_payload_bits_per_token",
            "Payload bits per prompt token",
            ["mechanism"],
            buckets=build_1_2_5_buckets(1 << 20),
            **r,
        )
        self.compression = Histogram(
            "del_compression_ratio",
            "Payload bits per token over a raw bf16 embedding's bits",
            ["mechanism"],
            buckets=RATIO_BUCKETS,
            **r,
        )
        self.by_level = Counter(
            "del_requests_by_privacy_level",
            "Requests by mechanism and soft-prompt level",
            ["mechanism", "level"],
            **r,
        )
        self.epsilon = Histogram(
            "del_epsilon_per_prompt",
            "Exact ε per prompt at the reported δ",
            buckets=EPSILON_BUCKETS,
            **r,
        )
        self.info.info({"task": task, "model": model})
        for code in STATUS_CODES:
            self.requests.labels(code)
        for label in labels:
            self.classified.labels(label)
        for reason in FinishReason:
            self.request_success.labels(reason.value)
        for encoding in ENCODINGS:
            self.by_encoding.labels(encoding)
        for mechanism in MECHANISMS:
            for child in (self.payload_bits, self.frames, self.bits_per_token, self.compression):
                child.labels(mechanism)
            for level in ["none", *levels]:
                self.by_level.labels(mechanism, level)

    def track_engine(
        self,
        running: Callable[[], int],
        waiting: Callable[[], int],
        kv_cache_bytes: Callable[[], tuple[int, int]] = lambda: (0, 0),
    ) -> None:
        """Read the engine's queue sizes and KV cache at scrape time."""
        self.running.set_function(running)
        self.waiting.set_function(waiting)
        self.kv_cache.labels("used").set_function(lambda: kv_cache_bytes()[0])
        self.kv_cache.labels("allocated").set_function(lambda: kv_cache_bytes()[1])

    def refused(self, code: str) -> None:
        """A stream refused before the servicer saw it (e.g. UNAUTHENTICATED)."""
        self.requests.labels(code).inc()

    def track_streams(self, open_streams: Callable[[], int]) -> None:
        """Read the open Generate streams at scrape time."""
        self.streams_open.set_function(open_streams)

    def record(self, stats: RequestStats) -> None:
        self.requests.labels(stats.code).inc()
        self.wire_received.inc(stats.wire_received_bytes)
        self.wire_sent.inc(stats.wire_sent_bytes)
        if stats.frames:
            self.frames.labels(stats.mechanism).inc(stats.frames)
            self.payload_bits.labels(stats.mechanism).inc(stats.payload_bits)
            self.by_encoding.labels(stats.encoding).inc()
        if stats.code != "OK":
            return
        if stats.finish_reason is not None:
            self.request_success.labels(stats.finish_reason.value).inc()
        if stats.label is not None:
            self.classified.labels(stats.label).inc()
        self.by_level.labels(stats.mechanism, stats.level).inc()
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.generation_tokens.inc(stats.generated_tokens)
        self.request_prompt_tokens.observe(stats.prompt_tokens)
        self.request_generation_tokens.observe(stats.generated_tokens)
        bits_per_token = stats.payload_bits / stats.prompt_tokens
        self.bits_per_token.labels(stats.mechanism).observe(bits_per_token)
        self.compression.labels(stats.mechanism).observe(bits_per_token / stats.raw_bits_per_token)
        if stats.time_to_first_token_s is not None:
            self.ttft.observe(stats.time_to_first_token_s)
        observe_all(self.itl, stats.inter_token_latencies_s)
        if stats.e2e_latency_s is not None:
            self.e2e.observe(stats.e2e_latency_s)
        if stats.epsilon_prompt is not None:
            self.epsilon.observe(stats.epsilon_prompt)

    def serve(self, host: str, port: int) -> WSGIServer:
        """Start the /metrics HTTP endpoint on a daemon thread; `.server_port` is the port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server


def observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """`histogram.observe` of every value, with one increment per bucket rather than per value
    (a request's inter-token latencies: dozens of values, on the event loop). It uses
    prometheus_client's own bucket fields, and observes one by one where they are missing."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    for bucket, count in collections.Counter(bisect.bisect_left(bounds, v) for v in values).items():
        buckets[bucket].inc(count)
    total.inc(sum(values))
