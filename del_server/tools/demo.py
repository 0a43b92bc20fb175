"""`make demo` / `make demo-nlu`: a real server and a real client talking over gRPC here.

Starts `del-server serve` with the default model and its trained adapter (or MODEL=...,
ADAPTER=...) in the background, waits for its health service to report SERVING, says in one
line each what every calibrated privacy level costs and protects, runs one private generation
with `del-client` at the level nearest a 10 % attack rate (or --mu), and stops the server with
SIGTERM (a graceful drain), whatever happens in between. With --nlu: all-MiniLM-L6-v2 and its
SST-2 adapter, and a few sentences classified privately instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from del_client.manifest import percent

from .. import argtypes
from ..settings import DEFAULT_ADAPTER, DEFAULT_MODEL, DEFAULT_NLU_ADAPTER

NLU_MODEL = "all-MiniLM-L6-v2"
# Sentences written for the demo (not from SST-2): what a user might send.
NLU_SENTENCES = (
    "I loved every minute of this film, the actors are wonderful.",
    "A dull, lifeless script that wastes a talented cast.",
    "The soundtrack is the only thing worth remembering.",
)

BIN = Path(sys.executable).parent
TARGET_ATTACK_RATE = 0.10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(target: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"del-server exited with status {server.returncode}")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"del-server did not report SERVING within {timeout_s:.0f} s")


def _chosen_level(target: str, *, classify: bool) -> list[str]:
    """Announce every level in one line; the client flags for the one nearest
    TARGET_ATTACK_RATE (none: the client's own default, which it will say)."""
    from del_client import Client, ClientConfig

    with Client(ClientConfig(target)) as client:
        levels = [lv for lv in client.manifest().model.privacy_levels if lv.calibrated]
    if not levels:
        print("privacy levels: none calibrated for this model; the client will refuse without --mu")
        return []
    chosen = min(levels, key=lambda lv: abs(lv.target_attack_rate - TARGET_ATTACK_RATE))
    print("privacy levels (ε exact per token at δ = 1e-5). The noise that hides the prompt also")
    if classify:
        print("garbles what the model reads: expect some sentences labelled wrongly (docs/eval-nlu")
        print("measures how many):")
    else:
        print("garbles what the model reads: expect a continuation that drifts from the prompt,")
        print("the more so the more private the level (docs/eval measures by how much):")
    for level in sorted(levels, key=lambda lv: lv.mu):
        mark = "→" if level is chosen else " "
        print(
            f" {mark} ≤ {percent(level.target_attack_rate)}: ε = {level.epsilon_token:.3g}; {level.summary()}"
        )
        if unread := level.unread_summary():
            print(f"          {unread}")
        if level.utility is not None:
            print(f"          utility: {level.utility.summary()}")
    print(flush=True)
    return ["--level", repr(chosen.target_attack_rate)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nlu", action="store_true", help="classify sentences with MiniLM")
    parser.add_argument("--model", default=os.environ.get("MODEL"))
    parser.add_argument("--adapter", default=os.environ.get("ADAPTER"))
    parser.add_argument("--prompt", default="Once upon a time, there was a little dog")
    parser.add_argument(
        "--mu", type=argtypes.positive_float, help="privacy level (default: a calibrated one)"
    )
    parser.add_argument("--timeout-s", type=argtypes.positive_float, default=300)
    args = parser.parse_args()
    default_model, default_adapter = (
        (NLU_MODEL, DEFAULT_NLU_ADAPTER) if args.nlu else (DEFAULT_MODEL, DEFAULT_ADAPTER)
    )
    if args.model is None:
        args.model, args.adapter = default_model, args.adapter or default_adapter

    port, metrics_port = _free_port(), _free_port()
    target = f"127.0.0.1:{port}"
    command = [
        str(BIN / "del-server"),
        "serve",
        "--model",
        args.model,
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--log-level",
        "WARNING",
    ]
    if args.adapter:
        command += ["--adapter", args.adapter]
    print(f"$ {shlex.join(command)}", flush=True)
    server = subprocess.Popen(command)
    try:
        _wait_until_serving(target, server, args.timeout_s)
        privacy = (
            ["--mu", repr(args.mu)]
            if args.mu is not None
            else _chosen_level(target, classify=args.nlu)
        )
        if args.nlu:
            calls = [["classify", sentence] for sentence in NLU_SENTENCES]
        else:
            calls = [["generate", args.prompt, "--max-new-tokens", "64", "--seed", "1"]]
        for call in calls:
            client = [str(BIN / "del-client"), *call, "--server", target, *privacy]
            print(f"$ {shlex.join(client)}", flush=True)
            subprocess.run(client, check=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
