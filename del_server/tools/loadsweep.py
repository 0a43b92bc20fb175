"""`make loadtest`: `del-client loadtest` at several concurrencies against a real server process.

The server runs as `del-server serve` in its own process (as deployed; on a small machine the
load generator would otherwise share its interpreter), with room for every stream
(--max-running and --max-waiting at the largest concurrency). After each level the server's
own counters are read from its metrics endpoint and set beside the client's: every request
the client started must appear there with the same outcome, so nothing is lost on either side.
Writes loadtest.json, loadtest.md and loadtest.png.

    python -m del_server.tools.loadsweep --concurrency 1 8 32 64 --duration 20 --out reports
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from del_client import ClientConfig
from del_client.loadtest import run_load

from .. import argtypes
from ..settings import DEFAULT_ADAPTER, DEFAULT_MODEL

STATUS_SAMPLE = re.compile(r'^del_requests_total\{code="(\w+)"\} (\S+)$', re.MULTILINE)


def _start_server(
    model: str, adapter: str | None, streams: int
) -> tuple[subprocess.Popen, str, int]:
    serve = ["serve", "--port", "0", "--metrics-port", "0", "--log-level", "WARNING"]
    command = [
        sys.executable,
        "-c",
        "from del_server.cli import main; main()",
        *serve,
        "--model",
        model,
        "--max-running",
        str(streams),
        "--max-waiting",
        str(streams),
        *(["--adapter", adapter] if adapter else []),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if match := re.search(r"listening on ([^ ]+) \(metrics :(\d+)\)", line):
            return process, match.group(1), int(match.group(2))
    raise RuntimeError(f"del-server exited with {process.wait()} before serving")


def _server_counts(metrics_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return {code: float(value) for code, value in STATUS_SAMPLE.findall(text)}


def sweep(
    model: str, adapter: str | None, levels: list[int], duration_s: float, max_new_tokens: int
) -> list[dict]:
    process, target, metrics_port = _start_server(model, adapter, max(levels))
    rows = []
    try:
        with tempfile.TemporaryDirectory() as cache:
            config = ClientConfig(target, bundle_cache_dir=cache, deadline_s=120, retries=0)
            for concurrency in levels:
                before = _server_counts(metrics_port)
                report = asyncio.run(
                    run_load(
                        config,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        max_new_tokens=max_new_tokens,
                    )
                )
                after = _server_counts(metrics_port)
                seen = {
                    c: after[c] - before.get(c, 0.0) for c in after if after[c] != before.get(c)
                }
                row = report.to_dict()
                row["server_counts"] = seen
                row["server_agrees"] = (
                    seen.get("OK", 0) == report.ok and sum(seen.values()) == report.requests
                )
                rows.append(row)
                print(
                    f"{concurrency:>3} streams: {report.ok}/{report.requests} OK, "
                    f"{report.throughput_rps:.2f} req/s, {report.tokens_per_s:.0f} tok/s, "
                    f"errors {report.errors}, server agrees: {row['server_agrees']}",
                    flush=True,
                )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return rows


def _markdown(rows: list[dict], machine: str) -> str:
    ms = lambda s: "-" if s is None else f"{1000 * s:.0f}"  # noqa: E731
    lines = [
        f"# Load test ({machine})",
        "",
        "| streams | requests | OK | errors | lost | req/s | tokens/s | TTFT p50/p90/p99 ms "
        "| e2e p50/p90/p99 ms | server agrees |",
        "|---:|---:|---:|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        ttft, e2e = r["ttft_s"], r["e2e_s"]
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['ok']} | {r['errors'] or 'none'} | "
            f"{r['lost']} | {r['throughput_rps']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{ms(ttft['p50'])}/{ms(ttft['p90'])}/{ms(ttft['p99'])} | "
            f"{ms(e2e['p50'])}/{ms(e2e['p90'])}/{ms(e2e['p99'])} | {r['server_agrees']} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], machine: str, path: Path) -> None:
    """Throughput and latency percentiles against the number of concurrent streams."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    streams = [r["concurrency"] for r in rows]
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    throughput.plot(streams, [r["tokens_per_s"] for r in rows], "o-")
    throughput.set(xlabel="concurrent streams", ylabel="generated tokens/s", xscale="log")
    throughput.set_ylim(bottom=0)
    for key, label, color in (
        ("ttft_s", "time to first token", "C0"),
        ("e2e_s", "end to end", "C1"),
    ):
        for percentile, style in (("p50", "o-"), ("p99", "o--")):
            values = [1000 * (r[key][percentile] or float("nan")) for r in rows]
            latency.plot(streams, values, style, color=color, label=f"{label} {percentile}")
    latency.set(xlabel="concurrent streams", ylabel="ms", xscale="log", yscale="log")
    latency.legend(fontsize="small")
    for axes in (throughput, latency):
        axes.set_xticks(streams, [str(n) for n in streams])
        axes.grid(alpha=0.3)
    figure.suptitle(f"del-client loadtest against del-server ({machine})", fontsize="medium")
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("DEL_MODEL", DEFAULT_MODEL))
    parser.add_argument(
        "--adapter", help="trained adapter (default: the committed one, for the default model)"
    )
    parser.add_argument(
        "--concurrency", type=argtypes.positive_int, nargs="+", default=[1, 8, 32, 64]
    )
    parser.add_argument("--duration", type=argtypes.positive_float, default=20.0)
    parser.add_argument("--max-new-tokens", type=argtypes.positive_int, default=32)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    if args.adapter is None and args.model == DEFAULT_MODEL:
        args.adapter = DEFAULT_ADAPTER
    rows = sweep(args.model, args.adapter, args.concurrency, args.duration, args.max_new_tokens)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loadtest.json").write_text(
        json.dumps({"machine": machine, "levels": rows}, indent=1)
    )
    (args.out / "loadtest.md").write_text(_markdown(rows, machine))
    _plot(rows, machine, args.out / "loadtest.png")
    if not all(r["server_agrees"] and r["lost"] == 0 for r in rows):
        raise SystemExit("some requests were lost or miscounted: see loadtest.json")


if __name__ == "__main__":
    main()
