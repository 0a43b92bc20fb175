"""A client in another language, written from protos/ and docs/PROTOCOL.md alone, against a
real server: tests/interop/node/conformance.mjs (Node.js, @grpc/grpc-js) checks the test
vectors, health, reflection v1, the manifest's levels, the bundle and its digest, raw greedy
generation against the golden ids, and a private generation with its own quantizer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from del_server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
NODE_CLIENT = REPO / "tests" / "interop" / "node"
ADAPTER = REPO / "del_server" / "adapters" / "stories260K"
CHECKS = ["vectors", "health", "reflection", "manifest", "bundle", "raw", "private"]


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.skip("node is not installed: the Node.js conformance client cannot run")
    if not (NODE_CLIENT / "node_modules").is_dir():
        pytest.skip(
            "tests/interop/node/node_modules is missing: run `npm ci --prefix tests/interop/node`"
        )
    return found


def test_a_node_client_written_from_the_protocol_page_conforms(node, serve, stories260k):
    settings = Settings(
        model=str(stories260k), adapter=str(ADAPTER), port=0, metrics_port=-1, enable_raw=True
    )
    reference = stories260k / "reference_greedy.json"
    with serve(settings) as loopback:
        run = subprocess.run(
            [node, "conformance.mjs", loopback.target, "--reference", str(reference)],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=180,
        )
    lines = run.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {run.stderr}"
    summary = json.loads(lines[-1])
    assert run.returncode == 0, f"{summary.get('error')} (passed: {summary['checks']}) {run.stderr}"
    assert summary["ok"]
    assert summary["checks"] == CHECKS
