"""deploy/docker: no container engine runs here, so every command the images run is run on
this machine instead, with the images' environment: the package builds from what the images
copy, the server image's entrypoint serves, reports SERVING and drains on SIGTERM, and the
client image's entrypoint talks to a server."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from del_client import Client, ClientConfig

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # stands for the images' /opt/venv
SERVICE_NAME = "del.v1.SplitInference"
SERVING = health_pb2.HealthCheckResponse.SERVING


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_status(target: str, service: str = "") -> int | None:
    """What grpc.health.v1 answers, as the kubelet's gRPC probe asks it; None: no answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=1).status
        except grpc.RpcError:
            return None


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s"
        time.sleep(0.1)


def test_server_image_installs_cpu_torch_pinned_like_the_makefile(server_image):
    assert server_image.args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pinned = re.search(r"^TORCH\s*:=\s*torch==(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert server_image.args["TORCH_VERSION"] == pinned.group(1)


@pytest.mark.parametrize(
    ("image", "packages"),
    [("server_image", {"del_client", "del_server"}), ("client_image", {"del_client"})],
)
def test_the_package_builds_from_what_the_image_copies(request, deploy_dir, tmp_path, image,
                                                       packages):  # fmt: skip
    stage = request.getfixturevalue(image)
    dockerfile = "Dockerfile" if image == "server_image" else "client.Dockerfile"
    ignore = (deploy_dir / "docker" / f"{dockerfile}.dockerignore").read_text().splitlines()
    context = tmp_path / "context"
    context.mkdir()
    for source in stage.context_sources:
        assert f"!{source}" in ignore, f"{dockerfile}.dockerignore keeps {source} out"
        if (REPO / source).is_dir():
            ignored = shutil.ignore_patterns("__pycache__")
            shutil.copytree(REPO / source, context / source, ignore=ignored)
        else:
            shutil.copy(REPO / source, context / source)
    # The image's `pip install .` without the network: setuptools is already here.
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                          "--no-build-isolation", "--wheel-dir", tmp_path / "wheels", context],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {name for name in top_level if not name.endswith(".dist-info")} == packages


@pytest.fixture(scope="module")
def models_volume(tmp_path_factory, shared_dir) -> Path:
    """What the Deployment mounts at /models: model/ and a (training-free) adapter/."""
    from del_server.adapter import pca_adapter
    from del_server.models import load_model

    volume = tmp_path_factory.mktemp("models")
    (volume / "model").symlink_to(shared_dir / "models" / "stories260K")
    pca_adapter(load_model(str(volume / "model")).embeddings, dim=16).save(volume / "adapter")
    return volume


@pytest.fixture(scope="module")
def image_server(server_image, rendered, models_volume, tmp_path_factory):
    """The image's entrypoint with the image's and the cpu overlay's environment, as a pod runs
    it; only the listening address moves to free ports on loopback."""
    objects = rendered["k8s/overlays/cpu"]
    config = next(o["data"] for o in objects if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"].startswith("del-server-config"))  # fmt: skip
    scratch = tmp_path_factory.mktemp("tmp")  # the pod's /tmp volume
    env = server_image.run_env({"/opt/venv": VENV, "/models": models_volume, "/tmp": scratch},
                               extra=config)  # fmt: skip
    port, metrics_port = free_port(), free_port()
    env |= {"DEL_HOST": "127.0.0.1", "DEL_PORT": str(port), "DEL_METRICS_PORT": str(metrics_port)}
    log = scratch / "server.log"  # a file, not a pipe: nobody reads while it serves
    with log.open("w") as out:
        process = subprocess.Popen(server_image.entrypoint + server_image.cmd, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    target = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or health_status(target) == SERVING, 120,
                 "the server reports SERVING")  # fmt: skip
        assert process.poll() is None, log.read_text()
        yield argparse.Namespace(process=process, target=target, config=config,
                                 metrics_url=f"http://127.0.0.1:{metrics_port}/metrics")  # fmt: skip
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_image_entrypoint_serves_the_model_and_adapter_from_the_volume(image_server, tmp_path):
    for service in ("", SERVICE_NAME):
        assert health_status(image_server.target, service) == SERVING
    config = ClientConfig(target=image_server.target, bundle_cache_dir=tmp_path)
    with Client(config) as client:
        result = client.generate("Once upon a time", mu=20, max_new_tokens=4).collect()
    assert result.usage.generated_tokens >= 1
    metrics = urllib.request.urlopen(image_server.metrics_url, timeout=10).read().decode()
    assert 'del_requests_total{code="OK"} 1.0' in metrics


def test_image_entrypoint_drains_in_flight_streams_on_sigterm_and_exits_0(
    image_server, held_stream, tmp_path
):
    stream = held_stream(image_server.target, tmp_path)
    stopping = time.monotonic()
    image_server.process.send_signal(signal.SIGTERM)
    # A probe sees the pod leave: NOT_SERVING, then no new calls at all.
    wait_for(lambda: health_status(image_server.target) != SERVING, 10, "probes fail")
    assert stream.finish().usage.generated_tokens >= 1, "the in-flight stream was finished"
    grace_s = float(image_server.config["DEL_GRACE_S"])
    assert image_server.process.wait(timeout=grace_s) == 0
    assert time.monotonic() - stopping < grace_s


def test_client_image_entrypoint_reads_a_live_servers_manifest(client_image, server, tmp_path):
    # The image's user has a home for the bundle cache; here it is a temporary directory.
    env = client_image.run_env({"/opt/venv": VENV}) | {"HOME": str(tmp_path)}
    help_run = subprocess.run(client_image.entrypoint + client_image.cmd, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert help_run.returncode == 0, help_run.stderr
    command = [*client_image.entrypoint, "manifest", "--server", server.target, "--json"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["models"][0]["model_id"] == "stories260K"
    assert os.environ.get("PATH") != env["PATH"], "del-client came from the image's PATH"
