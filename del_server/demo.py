"""`make demo`: a real server and a real client talking over gRPC on this machine.

Starts `del-server serve` with the default model (or MODEL=...) in the background, waits for
its health service to report SERVING, runs one private generation with `del-client`, and
stops the server with SIGTERM (a graceful drain), whatever happens in between.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("MODEL", "../shared/models/stories260K"))
    parser.add_argument("--adapter", default=os.environ.get("ADAPTER"))
    parser.add_argument("--prompt", default="Once upon a time, there was a little dog")
    parser.add_argument("--mu", default="20")
    parser.add_argument("--timeout-s", type=float, default=300)
    args = parser.parse_args()

    port, metrics_port = _free_port(), _free_port()
    target = f"127.0.0.1:{port}"
    command = [str(BIN / "del-server"), "serve", "--model", args.model, "--port", str(port),
               "--metrics-port", str(metrics_port), "--log-level", "WARNING"]  # fmt: skip
    if args.adapter:
        command += ["--adapter", args.adapter]
    print(f"$ {' '.join(command)}", flush=True)
    server = subprocess.Popen(command)
    try:
        _wait_until_serving(target, server, args.timeout_s)
        client = [str(BIN / "del-client"), "generate", args.prompt, "--server", target,
                  "--mu", args.mu, "--bits", "4", "--max-new-tokens", "64", "--seed", "1"]  # fmt: skip
        print(f"$ {' '.join(client)}", flush=True)
        subprocess.run(client, check=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
