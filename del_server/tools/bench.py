"""End-to-end speed: the same generations in-process and through gRPC, then under concurrency.

In-process means straight into the server's engine (same model, adapter, sampler and
scheduler, no gRPC); through gRPC means the SDK's `Client` against a real server on
loopback. Greedy decoding of a fixed prompt, so both paths produce the same tokens. Each
figure is the median of `repeats` runs. `make bench` writes bench_e2e.json and bench_e2e.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from del_client import Client, ClientConfig
from del_client.mechanism import BinomialQuantizer, PrivacySpec, dequantize
from del_client.sampling import Sampling

from ..generation import FinishEvent, PrivatePrompt, TokenEvent
from ..levels import choose_level
from ..server import RunningServer
from ..settings import DEFAULT_MODEL, Settings
from ..threaded import serve_in_thread

PROMPT = "Once upon a time, there was a little dog named Max. Max liked to run in the park"
MU = 20.0
BITS = 4


async def _in_process(running: RunningServer, new_tokens: int) -> tuple[float, int, float]:
    """(time to first token, tokens, seconds) straight through the engine."""
    served = running.served
    bundle = served.bundle
    spec = PrivacySpec.from_mu(mu=MU, dim=bundle.projection_dim, bits=BITS, clip=bundle.clip)
    started = time.perf_counter()
    symbols = BinomialQuantizer(spec).privatize(bundle.embed(bundle.encode(PROMPT)[1:]))
    soft_mu = choose_level(served.levels, "", spec).soft_prompt_mu  # as the service chooses
    inputs, _ = served.prompts.build(PrivatePrompt(dequantize(symbols, spec), mu=soft_mu))
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


def path_table(result: dict) -> list[str]:
    """Markdown rows: single-stream time to first token and tokens/s, in process and via gRPC."""
    ip, gr = result["in_process"], result["grpc"]
    return [
        "| path | time to first token (ms) | tokens/s |",
        "|---|---:|---:|",
        f"| in-process engine | {1000 * ip['time_to_first_token_s']:.1f} | {ip['tokens_per_s']:.1f} |",
        f"| through gRPC (SDK) | {1000 * gr['time_to_first_token_s']:.1f} | {gr['tokens_per_s']:.1f} |",
    ]


def concurrency_table(result: dict) -> list[str]:
    """Markdown rows: aggregate tokens/s and median time to first token per stream count."""
    return [
        "| concurrent streams | aggregate tokens/s | median time to first token (ms) |",
        "|---:|---:|---:|",
        *(
            f"| {row['streams']} | {row['aggregate_tokens_per_s']:.1f} "
            f"| {1000 * row['median_time_to_first_token_s']:.1f} |"
            for row in result["concurrency"]
        ),
    ]


def _markdown(result: dict) -> str:
    lines = [
        "# End-to-end benchmark",
        "",
        f"Model `{result['model']}`, μ={result['mu']}, b={result['bits']}, greedy, "
        f"{result['new_tokens']} new tokens, median of {result['repeats']}. {result['machine']}.",
        "",
        *path_table(result),
        "",
        f"gRPC costs {100 * result['grpc_tokens_per_s_cost']:.1f} % of single-stream tokens/s.",
        "",
        *concurrency_table(result),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_benchmark(
        model=args.model,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        cache_dir=args.out / ".bundle-cache",
    )
    (args.out / "bench_e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench_e2e.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
