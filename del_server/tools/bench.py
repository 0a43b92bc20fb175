"""End-to-end speed: DEL against the model's own batched speed, in one run on the same threads.

Three parts, all greedy decoding of one fixed prompt, `make bench` writes bench_e2e.json and
bench_e2e.md:

- **Single stream**: the same generation in-process (straight into the server's engine, no
  gRPC) and through gRPC (the SDK's `Client` on loopback); the median of `repeats` runs.
- **The model alone** at batch 1 / 8 / 32 / 64: Hugging Face `generate` (greedy, the same
  input embeddings the server builds for the prompt, soft prompt included) and a tight loop
  of batched forward passes over the model's own cache (no padding, argmax, nothing else):
  what the model itself does without a server.
- **DEL streams** at the same concurrencies: private generations through gRPC against a
  server in this process (its engine in a thread, the default, and in a process of its own,
  `--engine-process`), from `del-client loadtest` running in separate process(es), so the
  server's CPU time (this process and its engine's) and the load generator's (the children)
  are apart. The server's KV cache and resident memory are sampled meanwhile: memory per
  running stream.

Ratios: DEL's tokens/s over the model's at the same batch size, the model measured before and
after DEL at each level. The machine's load average is recorded, since a busy machine changes
every figure (on a shared 2-core machine, the model's own figures vary by a third run to run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from del_client import Client, ClientConfig
from del_client.mechanism import BinomialQuantizer, PrivacySpec
from del_client.parameters import DEFAULT_BITS
from del_client.randomness import seeded_generator_for_tests
from del_client.sampling import Sampling

from .. import argtypes
from ..generation import FinishEvent, PrivatePrompt, TokenEvent
from ..levels import choose_level
from ..runtime import ServedModel
from ..server import RunningServer
from ..settings import DEFAULT_ADAPTER, DEFAULT_MODEL, Settings
from ..threaded import serve_in_thread

PROMPT = "Once upon a time, there was a little dog named Max. Max liked to run in the park"
MU = 20.0
BITS = DEFAULT_BITS
LEVELS = (1, 8, 32, 64)
READING_LENGTHS = (4, 16, 32)  # prompt tokens the cost of reading them is measured at
MEMORY_SAMPLE_S = 0.02


async def _in_process(running: RunningServer, new_tokens: int) -> tuple[float, int, float]:
    """(time to first token, tokens, seconds) straight through the engine."""
    served = running.served
    bundle = served.bundle
    spec = PrivacySpec.from_mu(mu=MU, dim=bundle.projection_dim, bits=BITS, clip=bundle.clip)
    started = time.perf_counter()
    symbols = BinomialQuantizer(spec).privatize(bundle.embed(bundle.encode(PROMPT)[1:]))
    soft_mu = choose_level(served.levels, "", spec).soft_prompt_mu  # as the service chooses
    inputs = served.prompts.build(PrivatePrompt(symbols, spec, mu=soft_mu)).inputs
    handle = served.engine.submit("bench", inputs, Sampling(new_tokens, temperature=0))
    first, tokens = None, 0
    while not isinstance(event := await handle.events.get(), FinishEvent):
        if isinstance(event, TokenEvent) and event.token_id is not None:
            first = first or time.perf_counter() - started
            tokens += 1
    return first, tokens, time.perf_counter() - started


def _through_grpc(target: str, new_tokens: int, cache_dir: Path) -> tuple[float, int, float]:
    with Client(ClientConfig(target=target, bundle_cache_dir=cache_dir)) as client:
        client.bundle()  # fetched once, outside the timing
        started = time.perf_counter()
        first = None
        generation = client.generate(
            PROMPT, mu=MU, bits=BITS, max_new_tokens=new_tokens, temperature=0
        )
        for _ in generation:
            first = first or time.perf_counter() - started
        return first, generation.result.usage.generated_tokens, time.perf_counter() - started


def _median_run(run, repeats: int) -> dict:
    runs = [run() for _ in range(repeats)]
    return {
        "time_to_first_token_s": statistics.median(r[0] for r in runs),
        "tokens_per_s": statistics.median(r[1] / r[2] for r in runs),
        "tokens": runs[0][1],
    }


def _aggregate(target: str, streams: int, new_tokens: int, cache_dir: Path) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        runs = list(
            pool.map(lambda _: _through_grpc(target, new_tokens, cache_dir), range(streams))
        )
    wall = time.perf_counter() - started
    return {
        "streams": streams,
        "aggregate_tokens_per_s": sum(r[1] for r in runs) / wall,
        "median_time_to_first_token_s": statistics.median(r[0] for r in runs),
    }


def run_benchmark(*, model: str, new_tokens: int, repeats: int, cache_dir: Path) -> dict:
    """The single-stream figures and aggregate tokens/s of 1, 4 and 16 streams from threads of
    this process (the evaluation's speed stage, with the PCA default)."""
    settings = Settings(
        model=model,
        port=0,
        metrics_port=-1,
        max_running=16,
        max_waiting=64,
        max_new_tokens=max(256, new_tokens),
    )
    with serve_in_thread(settings) as server:
        target = server.target
        steps = tqdm(total=2 + 3, desc="e2e benchmark", unit="stage")
        in_process = _median_run(
            lambda: server.call(_in_process(server.running, new_tokens)), repeats
        )
        steps.update()
        grpc_single = _median_run(lambda: _through_grpc(target, new_tokens, cache_dir), repeats)
        steps.update()
        concurrency = []
        for streams in (1, 4, 16):
            concurrency.append(_aggregate(target, streams, new_tokens, cache_dir))
            steps.update()
        steps.close()
    return {
        "model": model,
        "prompt": PROMPT,
        "mu": MU,
        "bits": BITS,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "machine": platform.platform(),
        "in_process": in_process,
        "grpc": grpc_single,
        "grpc_tokens_per_s_cost": 1 - grpc_single["tokens_per_s"] / in_process["tokens_per_s"],
        "concurrency": concurrency,
    }


def concurrency_table(result: dict) -> list[str]:
    """Markdown rows: aggregate tokens/s and median time to first token per stream count
    (run_benchmark's streams from threads of one process)."""
    return [
        "| concurrent streams | aggregate tokens/s | median time to first token (ms) |",
        "|---:|---:|---:|",
        *(
            f"| {row['streams']} | {row['aggregate_tokens_per_s']:.1f} "
            f"| {1000 * row['median_time_to_first_token_s']:.1f} |"
            for row in result["concurrency"]
        ),
    ]


def prompt_inputs(served: ServedModel) -> torch.Tensor:
    """The input embeddings the server builds for PROMPT at μ=MU (the soft prompt of the level
    the service would choose, if any; BOS; tokens)."""
    bundle = served.bundle
    spec = PrivacySpec.from_mu(mu=MU, dim=bundle.projection_dim, bits=BITS, clip=bundle.clip)
    quantizer = BinomialQuantizer(spec, rng=seeded_generator_for_tests(0))
    symbols = quantizer.privatize(bundle.embed(bundle.encode(PROMPT)[1:]))
    soft_mu = choose_level(served.levels, "", spec).soft_prompt_mu  # as the service chooses
    inputs = served.prompts.build(PrivatePrompt(symbols, spec, mu=soft_mu)).inputs
    return inputs


@torch.inference_mode()
def reading_cost(served: ServedModel, lengths: tuple[int, ...], repeats: int) -> list[dict]:
    """Per prompt length: the server turning the symbols into the LLM's inputs (the particle
    reader, when the adapter has one) against the model's own prefill of those inputs, the
    median of `repeats` each, on this process's threads."""
    bundle = served.bundle
    spec = PrivacySpec.from_mu(mu=MU, dim=bundle.projection_dim, bits=BITS, clip=bundle.clip)
    quantizer = BinomialQuantizer(spec, rng=seeded_generator_for_tests(0))
    ids = bundle.encode(" ".join([PROMPT] * 4))[1:]
    rows = []
    for length in lengths:
        prompt = PrivatePrompt(quantizer.privatize(bundle.embed(ids[:length])), spec, mu=None)
        builds, prefills = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            inputs = served.prompts.build(prompt).inputs
            builds.append(time.perf_counter() - started)
            started = time.perf_counter()
            served.loaded.model(inputs_embeds=inputs[None], logits_to_keep=1)
            prefills.append(time.perf_counter() - started)
        build_s, prefill_s = statistics.median(builds), statistics.median(prefills)
        rows.append(
            {
                "prompt_tokens": length,
                "build_ms": 1000 * build_s,
                "prefill_ms": 1000 * prefill_s,
                "ratio_to_prefill": build_s / prefill_s,
            }
        )
    return rows


def reading_table(result: dict) -> list[str]:
    return [
        "| prompt tokens | reading the symbols (ms) | the model's prefill (ms) | ratio |",
        "|---:|---:|---:|---:|",
        *(
            f"| {row['prompt_tokens']} | {row['build_ms']:.1f} | {row['prefill_ms']:.2f} "
            f"| {row['ratio_to_prefill']:.1f} |"
            for row in result["reading"]
        ),
    ]


@torch.inference_mode()
def model_alone(model, inputs: torch.Tensor, batch: int, new_tokens: int, repeats: int) -> dict:
    """Tokens/s of the model by itself on `batch` copies of `inputs` (T, d), prefill included,
    `repeats` times each: Hugging Face `generate` (greedy) and a tight loop of forward passes
    over its own cache."""
    from transformers import GenerationConfig

    embeds = inputs[None].expand(batch, -1, -1).contiguous()
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    config = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )

    def generate() -> float:
        started = time.perf_counter()
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)
        assert out.shape == (batch, new_tokens)
        return batch * new_tokens / (time.perf_counter() - started)

    def loop() -> float:
        started = time.perf_counter()
        out = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        for _ in range(new_tokens - 1):
            ids = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            out = model(input_ids=ids, cache=out.cache, use_cache=True)
        out.logits[:, -1].argmax(dim=-1)
        return batch * new_tokens / (time.perf_counter() - started)

    generate(), loop()  # warm-up
    return {
        "generate": [generate() for _ in range(repeats)],
        "loop": [loop() for _ in range(repeats)],
    }


class _MemorySampler:
    """The engine's rows and KV cache and this process's resident memory, sampled on a thread."""

    def __init__(self, served: ServedModel) -> None:
        self._engine = served.engine
        engine_pid = getattr(served.engine, "pid", None)
        self._pids = (None,) if engine_pid is None else (None, engine_pid)
        self._stop = threading.Event()
        self.baseline_rss = _rss_bytes(self._pids)
        self.peak_rss = self.baseline_rss
        self.peak_rows = 0
        self.kv_used_at_peak_rows = 0
        self.peak_kv_allocated = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_S):
            rows = self._engine.running
            used, allocated = getattr(self._engine, "kv_cache_bytes", (0, 0))
            if rows >= self.peak_rows:
                self.peak_rows, self.kv_used_at_peak_rows = rows, used
            self.peak_kv_allocated = max(self.peak_kv_allocated, allocated)
            self.peak_rss = max(self.peak_rss, _rss_bytes(self._pids))

    def to_dict(self, streams: int) -> dict:
        rows = max(1, self.peak_rows)
        return {
            "peak_running": self.peak_rows,
            "kv_used_bytes_per_stream": self.kv_used_at_peak_rows / rows,
            "kv_allocated_bytes_per_stream": self.peak_kv_allocated / rows,
            "rss_growth_bytes_per_stream": (self.peak_rss - self.baseline_rss) / streams,
            "rss_peak_bytes": self.peak_rss,
        }


def _rss_bytes(pids: tuple[int | None, ...] = (None,)) -> int:
    """Resident memory of this process (None) and the others given."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid or 'self'}/statm") as statm:
            total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def _server_cpu_s(engine_pid: int | None) -> float:
    """CPU time of this process, and of the engine's when it runs in a process of its own."""
    seconds = time.process_time()
    if engine_pid is not None:
        with open(f"/proc/{engine_pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def del_streams(
    served: ServedModel,
    target: str,
    streams: int,
    *,
    new_tokens: int,
    duration_s: float,
    processes: int,
    cache_dir: Path,
) -> dict:
    """`streams` private greedy streams from `del-client loadtest` in `processes` child
    processes for `duration_s`: throughput, time to first token, CPU on both sides, memory."""
    shares = [streams // processes + (i < streams % processes) for i in range(processes)]
    command = [sys.executable, "-c", "from del_client.cli import main; main()", "loadtest"]
    options = ["--server", target, "--duration", str(duration_s), "--prompt", PROMPT]
    options += ["--mu", str(MU), "--bits", str(BITS), "--max-new-tokens", str(new_tokens)]
    options += ["--temperature", "0", "--retries", "0", "--json"]
    env = {**os.environ, "DEL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    engine_pid = getattr(served.engine, "pid", None)
    server_cpu, children_cpu = _server_cpu_s(engine_pid), _children_cpu_s()
    with _MemorySampler(served) as memory:
        children = [
            subprocess.Popen(
                [*command, *options, "--concurrency", str(share)],
                stdout=subprocess.PIPE,
                env=env,
                text=True,
            )
            for share in shares
            if share
        ]
        outputs = [child.communicate()[0] for child in children]
    server_cpu = _server_cpu_s(engine_pid) - server_cpu
    children_cpu = _children_cpu_s() - children_cpu
    if any(child.returncode for child in children):
        raise RuntimeError(f"a load generator failed: {[c.returncode for c in children]}")
    reports = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    tokens = sum(r["tokens_per_s"] * r["elapsed_s"] for r in reports)
    elapsed = max(r["elapsed_s"] for r in reports)
    return {
        "streams": streams,
        "processes": len(reports),
        "requests_ok": sum(r["ok"] for r in reports),
        "errors": sum(sum(r["errors"].values()) + r["lost"] for r in reports),
        "tokens": round(tokens),
        "elapsed_s": elapsed,
        "tokens_per_s": tokens / elapsed,
        "tokens_per_text_delta": tokens / max(1, sum(r["text_deltas"] for r in reports)),
        # one process: its percentiles; several: the median of theirs
        "ttft_p50_s": statistics.median(r["ttft_s"]["p50"] for r in reports),
        "ttft_p90_s": statistics.median(r["ttft_s"]["p90"] for r in reports),
        "e2e_p50_s": statistics.median(r["e2e_s"]["p50"] for r in reports),
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_token": 1e6 * server_cpu / max(1, tokens),
        "load_generator_cpu_s": sum(r["cpu_s"] for r in reports),
        "load_generator_cpu_s_with_startup": children_cpu,
        "memory": memory.to_dict(streams),
    }


ENGINES = {"thread": False, "process": True}  # name -> Settings.engine_process


def compare(
    *,
    model: str,
    adapter: str | None,
    new_tokens: int,
    repeats: int,
    levels: tuple[int, ...],
    duration_s: float,
    processes: int,
    threads: int,
    cache_dir: Path,
    engines: tuple[str, ...] = ("thread", "process"),
    stream_interval_ms: float | None = None,
    join_wait_ms: float | None = None,
) -> dict:
    """Per level: the model alone, DEL with each engine (a thread of the server, a process of
    its own), the model alone again; its figure is the median of both measurements."""
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    settings = {
        name: Settings(
            model=model,
            adapter=adapter,
            port=0,
            metrics_port=-1,
            max_running=max(levels),
            max_waiting=max(levels),
            max_new_tokens=max(256, new_tokens),
            engine_process=ENGINES[name],
            **({} if stream_interval_ms is None else {"stream_interval_ms": stream_interval_ms}),
            **({} if join_wait_ms is None else {"join_wait_ms": join_wait_ms}),
        )
        for name in engines
    }
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(serve_in_thread(s)) for name, s in settings.items()}
        first = servers[engines[0]]
        served = first.running.served
        steps = tqdm(total=2 + (2 + len(engines)) * len(levels), desc="e2e benchmark")
        in_process = _median_run(
            lambda: first.call(_in_process(first.running, new_tokens)), repeats
        )
        steps.update()
        grpc_single = _median_run(
            lambda: _through_grpc(first.target, new_tokens, cache_dir), repeats
        )
        steps.update()
        inputs = prompt_inputs(served)
        reading = reading_cost(served, READING_LENGTHS, 2 * repeats + 1)
        rows = []
        for streams in levels:  # interleaved: a change in the machine's load hits all alike
            samples = model_alone(served.loaded.model, inputs, streams, new_tokens, repeats)
            steps.update()
            level = []
            for name, server in servers.items():
                row = del_streams(
                    server.running.served,
                    server.target,
                    streams,
                    new_tokens=new_tokens,
                    duration_s=duration_s,
                    processes=min(processes, streams),
                    cache_dir=cache_dir,
                )
                row["engine"] = name
                level.append(row)
                steps.update()
            after = model_alone(served.loaded.model, inputs, streams, new_tokens, repeats)
            steps.update()
            alone = {
                "batch": streams,
                "generate_tokens_per_s": statistics.median(samples["generate"] + after["generate"]),
                "loop_tokens_per_s": statistics.median(samples["loop"] + after["loop"]),
                "generate_samples": samples["generate"] + after["generate"],
                "loop_samples": samples["loop"] + after["loop"],
            }
            for row in level:
                row["model"] = alone
                row["ratio_to_generate"] = row["tokens_per_s"] / alone["generate_tokens_per_s"]
                row["ratio_to_loop"] = row["tokens_per_s"] / alone["loop_tokens_per_s"]
            rows += level
        steps.close()
    defaults = next(iter(settings.values()))
    return {
        "model": model,
        "adapter": adapter,
        "prompt": PROMPT,
        "prompt_inputs": inputs.shape[0],
        "mu": MU,
        "bits": BITS,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "duration_s": duration_s,
        "torch_threads": threads,
        "stream_interval_ms": getattr(defaults, "stream_interval_ms", 0.0),
        "join_wait_ms": getattr(defaults, "join_wait_ms", 0.0),
        "engines": list(engines),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "in_process": in_process,
        "grpc": grpc_single,
        "grpc_tokens_per_s_cost": 1 - grpc_single["tokens_per_s"] / in_process["tokens_per_s"],
        "reader": served.adapter.reader is not None,
        "reading": reading,
        "streams": rows,
        "targets": {name: _targets([r for r in rows if r["engine"] == name]) for name in engines},
    }


def _targets(rows: list[dict]) -> dict:
    """The issue's targets, where the levels measured allow them."""
    by = {row["streams"]: row for row in rows}
    targets = {}
    if 32 in by:
        targets["32 streams >= 0.6x the model's generate at batch 32"] = (
            by[32]["ratio_to_generate"],
            by[32]["ratio_to_generate"] >= 0.6,
        )
    if 1 in by:
        targets["1 stream >= 1.0x the model's generate at batch 1"] = (
            by[1]["ratio_to_generate"],
            by[1]["ratio_to_generate"] >= 1.0,
        )
    if 1 in by and 32 in by:
        ratio = by[32]["ttft_p50_s"] / by[1]["ttft_p50_s"]
        targets["TTFT p50 at 32 streams <= 2x one stream's"] = (ratio, ratio <= 2.0)
    return targets


def path_table(result: dict) -> list[str]:
    """Markdown rows: single-stream time to first token and tokens/s, in process and via gRPC."""
    ip, gr = result["in_process"], result["grpc"]
    return [
        "| path | time to first token (ms) | tokens/s |",
        "|---|---:|---:|",
        f"| in-process engine | {1000 * ip['time_to_first_token_s']:.1f} | {ip['tokens_per_s']:.1f} |",
        f"| through gRPC (SDK) | {1000 * gr['time_to_first_token_s']:.1f} | {gr['tokens_per_s']:.1f} |",
    ]


def streams_table(result: dict) -> list[str]:
    """Markdown rows: DEL's streams against the model alone at the same batch size."""
    lines = [
        "| streams | engine | model `generate` tok/s | model loop tok/s | DEL tok/s "
        "| DEL / generate | DEL / loop | TTFT p50 / p90 ms | tokens per message "
        "| server CPU s (µs/token) | load generator CPU s |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    for row in result["streams"]:
        model = row["model"]
        lines.append(
            f"| {row['streams']} | {row['engine']} | {model['generate_tokens_per_s']:.0f} "
            f"| {model['loop_tokens_per_s']:.0f} | {row['tokens_per_s']:.0f} "
            f"| {row['ratio_to_generate']:.2f}× | {row['ratio_to_loop']:.2f}× "
            f"| {1000 * row['ttft_p50_s']:.1f} / {1000 * row['ttft_p90_s']:.1f} "
            f"| {row['tokens_per_text_delta']:.1f} "
            f"| {row['server_cpu_s']:.1f} ({row['server_cpu_us_per_token']:.0f}) "
            f"| {row['load_generator_cpu_s']:.1f} |"
        )
    return lines


def memory_table(result: dict) -> list[str]:
    lines = [
        "| streams | engine | peak running | KV cache used / allocated per stream (KiB) "
        "| resident memory growth per stream (KiB) |",
        "|---:|---|---:|---|---:|",
    ]
    for row in result["streams"]:
        memory = row["memory"]
        lines.append(
            f"| {row['streams']} | {row['engine']} | {memory['peak_running']} "
            f"| {memory['kv_used_bytes_per_stream'] / 1024:.1f} / "
            f"{memory['kv_allocated_bytes_per_stream'] / 1024:.1f} "
            f"| {memory['rss_growth_bytes_per_stream'] / 1024:.0f} |"
        )
    return lines


def _markdown(result: dict) -> str:
    load = ", ".join(f"{x:.2f}" for x in result["load_average_before"])
    load_after = ", ".join(f"{x:.2f}" for x in result["load_average_after"])
    lines = [
        "# End-to-end benchmark",
        "",
        f"Model `{result['model']}` (adapter `{result['adapter']}`), μ={result['mu']}, "
        f"b={result['bits']}, greedy, {result['new_tokens']} new tokens after "
        f"{result['prompt_inputs']} input embeddings, {result['torch_threads']} torch "
        f"thread(s), stream interval {result['stream_interval_ms']:g} ms, join wait "
        f"{result['join_wait_ms']:g} ms. {result['machine']}, {result['cpus']} CPUs, load average {load} before "
        f"and {load_after} after.",
        "",
        f"## One stream (median of {result['repeats']})",
        "",
        *path_table(result),
        "",
        f"gRPC costs {100 * result['grpc_tokens_per_s_cost']:.1f} % of single-stream tokens/s.",
        "",
        "## Reading a private prompt",
        "",
        "What the server does with a prompt's symbols before its prefill: "
        + (
            "the particle reader (the LLM's particle sampler over the prompt; μ is no level's, "
            "so it never skips)"
            if result["reader"]
            else "the adapter's front-end"
        )
        + ", against the model's own prefill of the inputs it builds; medians.",
        "",
        *reading_table(result),
        "",
        "## DEL against the model alone",
        "",
        "The model alone: `generate` and a tight loop of batched forward passes, on the same "
        "threads in this process, prefill included; the median of "
        f"{2 * result['repeats']} runs, half before and half after DEL's at that level. DEL's "
        "engine runs in a thread of the server (`thread`, the default) or in a process of its "
        "own (`process`, `--engine-process`). DEL: `del-client loadtest` in separate "
        f"process(es) for {result['duration_s']:g} s per level against the server in this "
        "process; server CPU is this process's (and its engine process's, when it has one), "
        "load generator CPU the children's, both during the load. TTFT is the client's, from "
        "the call (privatization included) to the first text.",
        "",
        *streams_table(result),
        "",
        *memory_table(result),
        "",
        "## Targets",
        "",
        *(
            f"- engine {engine}: {name}: {value:.3f} — {'met' if ok else 'NOT met'}"
            for engine, targets in result["targets"].items()
            for name, (value, ok) in targets.items()
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--adapter", help="trained adapter (default: the committed one, for the default model)"
    )
    parser.add_argument("--new-tokens", type=argtypes.positive_int, default=32)
    parser.add_argument("--repeats", type=argtypes.positive_int, default=3)
    parser.add_argument("--levels", type=argtypes.positive_int, nargs="+", default=list(LEVELS))
    parser.add_argument(
        "--duration", type=argtypes.positive_float, default=8.0, help="seconds of load per level"
    )
    parser.add_argument(
        "--processes",
        type=argtypes.positive_int,
        default=1,
        help="load generator processes per level",
    )
    parser.add_argument(
        "--threads",
        type=argtypes.positive_int,
        default=1,
        help="torch threads, for the model and the server",
    )
    parser.add_argument(
        "--stream-interval-ms", type=float, help="the server's (default: its own default)"
    )
    parser.add_argument("--join-wait-ms", type=float, help="the server's (default: its own)")
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=list(ENGINES),
        default=list(ENGINES),
        help="the server's engine in a thread (the default), in a process of its own, or both",
    )
    args = parser.parse_args()
    if args.adapter is None and args.model == DEFAULT_MODEL:
        args.adapter = DEFAULT_ADAPTER
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as cache:
        result = compare(
            model=args.model,
            adapter=args.adapter,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            levels=tuple(args.levels),
            duration_s=args.duration,
            processes=args.processes,
            threads=args.threads,
            cache_dir=Path(cache),
            stream_interval_ms=args.stream_interval_ms,
            join_wait_ms=args.join_wait_ms,
            engines=tuple(args.engines),
        )
    (args.out / "bench_e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench_e2e.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
