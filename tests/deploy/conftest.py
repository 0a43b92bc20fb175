"""What tests/deploy reads: the rendered Kubernetes manifests, the images' final stages, and
the command-line tools (kubectl, promtool, prometheus) that check them; and a Generate stream
that stays in flight for as long as a test needs."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from del_client import Client, ClientConfig, GenerationResult
from del_client.proto import inference_pb2_grpc
from del_client.request import PrivacyChoice, PromptPlan
from del_client.results import ReplyFolder
from del_client.sampling import Sampling

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZATIONS = ["k8s/base", "k8s/overlays/cpu", "k8s/overlays/gpu"]


WHERE_FROM = {
    "kubectl": "Kubernetes' client tools (kubectl kustomize renders the overlays)",
    "promtool": "Debian's prometheus package, which .ci/run installs",
    "prometheus": "Debian's prometheus package, which .ci/run installs",
}


def require(tool: str) -> str:
    """The tool's path; without it the test is skipped, except in CI, where it fails."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not on PATH; it comes with {WHERE_FROM[tool]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tool():
    """`tool("promtool")`: the path of a command-line tool the test needs."""
    return require


@pytest.fixture(scope="session")
def deploy_dir() -> Path:
    return DEPLOY


@pytest.fixture(params=KUSTOMIZATIONS)
def kustomization(request) -> str:
    """Each kustomization in turn, as a key of `rendered`."""
    return request.param


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """`kubectl kustomize` of each kustomization: its path -> the objects it renders."""
    kubectl = require("kubectl")
    objects = {}
    for path in KUSTOMIZATIONS:
        out = subprocess.run([kubectl, "kustomize", str(DEPLOY / path)], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
        objects[path] = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    return objects


@dataclass(frozen=True)
class ImageStage:
    """The final stage of a Dockerfile: what a container of the image starts with."""

    args: dict[str, str]  # ARG defaults of every stage
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    user: str | None
    context_sources: list[str]  # what COPY takes from the build context, in any stage

    def run_env(self, paths: dict[str, Path], extra: dict[str, str] | None = None) -> dict:
        """The container's environment (the image's, then `extra` as Kubernetes sets it) on
        this machine: image paths mapped to local ones, $VAR expanded from this process, so
        PATH=/opt/venv/bin:$PATH finds this virtual environment's scripts."""

        def local(path: str) -> str:
            for image_path, here in paths.items():
                if path == image_path or path.startswith(image_path + "/"):
                    return str(here) + path.removeprefix(image_path)
            return path

        merged = {**self.env, **(extra or {})}
        return {
            key: os.path.expandvars(":".join(local(part) for part in value.split(":")))
            for key, value in merged.items()
        }


def parse_dockerfile(path: Path) -> ImageStage:
    """Enough of the Dockerfile grammar for these files: continuations, comments, exec-form
    ENTRYPOINT and CMD, KEY=value ENV pairs."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip().removesuffix("\\") + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    args, sources, stage = {}, [], []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stage = []
        elif instruction == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
        elif instruction == "COPY" and "--from=" not in rest:
            sources += [word for word in rest.split()[:-1] if not word.startswith("--")]
        stage.append((instruction, rest))
    env, entrypoint, cmd, user = {}, [], [], None
    for instruction, rest in stage:
        if instruction == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(rest))
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif instruction == "CMD":
            cmd = json.loads(rest)
        elif instruction == "USER":
            user = rest
    return ImageStage(args, env, entrypoint, cmd, user, sources)


@pytest.fixture(scope="session")
def server_image() -> ImageStage:
    return parse_dockerfile(DEPLOY / "docker" / "Dockerfile")


@pytest.fixture(scope="session")
def client_image() -> ImageStage:
    return parse_dockerfile(DEPLOY / "docker" / "client.Dockerfile")


class HeldStream:
    """A Generate stream that sends its header and frames but holds its End marker until
    finish(): the server has a stream in flight that cannot complete before the test says."""

    def __init__(self, target: str, cache_dir: Path) -> None:
        config = ClientConfig(target=target, bundle_cache_dir=cache_dir)
        with Client(config) as client:
            model, bundle = client.manifest().model, client.bundle()
        plan = PromptPlan("Once upon a time", PrivacyChoice(mu=20), Sampling(max_new_tokens=8))
        self._request = plan.prepare(model, bundle, max_payload_bytes=config.max_payload_bytes)
        self._prompt_sent, self._release = threading.Event(), threading.Event()
        self._channel = grpc.insecure_channel(target)
        stub = inference_pb2_grpc.SplitInferenceStub(self._channel)
        self._responses = stub.Generate(self._messages(), timeout=60)
        assert self._prompt_sent.wait(10), "the prompt was not sent"
        time.sleep(0.5)  # the frames have left the client; let the server take the stream

    def _messages(self):
        yield from self._request.messages[:-1]
        self._prompt_sent.set()
        self._release.wait(30)
        yield self._request.messages[-1]

    def finish(self) -> GenerationResult:
        """Send End and read the whole reply (grpc.RpcError if the server ended the stream)."""
        self._release.set()
        reply = ReplyFolder(self._request)
        try:
            for response in self._responses:
                reply.feed(response)
        finally:
            self._channel.close()
        return reply.result()


@pytest.fixture(scope="session")
def held_stream():
    """`held_stream(target, cache_dir)` opens a HeldStream."""
    return HeldStream
