"""Both SDK clients and the CLI against the real loopback server with stories260K.

These check what a user of del_client sees: results, wire accounting, exact ε, errors mapped
from status codes, the bundle cache, and cancellation, through Client, AsyncClient and the CLI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import socket
import time
import urllib.request

import pytest

from del_client import (
    AsyncClient,
    BudgetExceededError,
    Client,
    ClientConfig,
    GenerationResult,
    LimitExceededError,
    PreconditionFailedError,
    PrivacyBudget,
    PrivacySpec,
    ServerUnavailableError,
)
from del_client.cli import main
from del_client.proto import inference_pb2
from del_client.request import PrivacyChoice, PromptPlan
from del_client.sampling import Sampling

PROMPT = "Once upon a time"
PROMPT_TOKENS = 4  # BOS is the server's, not the client's


@pytest.fixture(scope="module")
def reference(shared_dir) -> dict:
    return json.loads((shared_dir / "models/stories260K/reference_greedy.json").read_text())


@pytest.fixture(scope="module")
def config(server, tmp_path_factory) -> ClientConfig:
    return ClientConfig(server.target, deadline_s=30, bundle_cache_dir=tmp_path_factory.mktemp("b"))


@pytest.fixture(scope="module")
def client(config):
    with Client(config) as client:
        yield client


def metrics(server) -> str:
    return urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()


def metric(server, name: str) -> float:
    """Sum of every sample of `name` (all label values)."""
    samples = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", metrics(server), re.M)
    assert samples, f"{name} not exported"
    return sum(float(value) for value in samples)


def requests_with_code(server, code: str) -> float:
    match = re.search(rf'^del_requests_total{{code="{code}"}} (\S+)$', metrics(server), re.M)
    assert match, f"no del_requests_total for {code}"
    return float(match.group(1))


def wait_for_cancellation(server, cancelled_before: float, timeout_s: float = 10.0) -> None:
    """Until the server has recorded one more CANCELLED stream and runs nothing any more."""
    deadline = time.monotonic() + timeout_s
    while (
        requests_with_code(server, "CANCELLED") != cancelled_before + 1
        or metric(server, "del_num_requests_running") != 0
    ):
        assert time.monotonic() < deadline, "the server did not cancel the stream"
        time.sleep(0.05)


def test_sync_and_async_clients_return_the_same_kind_of_result(client, config):
    sync = client.generate(PROMPT, mu=10, max_new_tokens=8, temperature=0).collect()

    async def run_async() -> tuple[list[str], GenerationResult]:
        async with AsyncClient(config) as async_client:
            generation = async_client.generate(PROMPT, mu=10, max_new_tokens=8, temperature=0)
            deltas = [delta async for delta in generation]
            return deltas, generation.result

    deltas, async_result = asyncio.run(run_async())
    for result in (sync, async_result):
        assert isinstance(result, GenerationResult)
        assert result.mechanism == "binomial"
        assert result.private
        assert result.usage.prompt_tokens == PROMPT_TOKENS
        assert result.finish_reason in ("length", "eos")
        assert len(result.token_ids) == result.usage.generated_tokens
        # The server offers coded frames: both clients send whichever of coded and packed is
        # smaller for their symbols (at 4 tokens the coder's state makes it a close call).
        assert result.payload_encoding in ("ans", "packed")
        assert result.usage.payload_bits <= PROMPT_TOKENS * 16 * 4
        assert result.usage.wire_bytes_received == result.client_wire_bytes_sent
    assert "".join(deltas) == async_result.text
    # Same privacy setting, same prompt: the same exact guarantee, whichever client sent it.
    assert async_result.epsilon_prompt == sync.epsilon_prompt


def test_raw_greedy_generation_reproduces_the_reference_continuation(client, reference):
    generation = client.generate(
        reference["prompt"], mechanism="raw", temperature=0, max_new_tokens=60
    )
    deltas = list(generation)
    result = generation.result
    assert list(result.token_ids) == reference["greedy_ids_60"][5:]
    assert reference["prompt"] + "".join(deltas) == reference["greedy_text"]
    assert not result.private
    assert result.epsilon_token is None
    assert result.epsilon_prompt is None
    assert "NO PRIVACY" in result.privacy_note
    assert result.soft_prompt_mu is None
    assert (result.level_id, result.soft_prompt) == ("", "raw")


def test_a_server_without_levels_says_a_private_request_got_no_soft_prompt(client):
    result = client.generate(PROMPT, mu=10, max_new_tokens=2).collect()
    assert (result.soft_prompt_mu, result.level_id, result.soft_prompt) == (None, "", "no level")


def test_streamed_deltas_concatenate_to_the_result_text(client):
    generation = client.generate(PROMPT, mu=10, max_new_tokens=24, seed=3)
    deltas = list(generation)
    assert deltas
    assert all(deltas)
    assert "".join(deltas) == generation.result.text


def test_the_server_received_exactly_the_bytes_the_client_counted(client):
    result = client.generate(PROMPT, epsilon=50, max_new_tokens=4).collect()
    assert result.usage.wire_bytes_received == result.client_wire_bytes_sent


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_packed_payload_is_projection_dim_times_bits_per_token(config, bits):
    with Client(dataclasses.replace(config, payload_encoding="packed")) as packing:
        result = packing.generate(PROMPT, mu=10, bits=bits, max_new_tokens=2).collect()
        assert result.payload_encoding == "packed"
        assert result.usage.bits_per_token == packing.manifest().model.projection_dim * bits


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_coded_payload_bits_are_the_coded_bytes_sent(config, bits):
    with Client(dataclasses.replace(config, payload_encoding="ans")) as coding:
        result = coding.generate(PROMPT, mu=10, bits=bits, max_new_tokens=2).collect()
        packed_bits = PROMPT_TOKENS * coding.manifest().model.projection_dim * bits
    assert result.payload_encoding == "ans"
    assert result.usage.payload_bits % 8 == 0  # whole bytes
    assert 0 < result.usage.payload_bits <= packed_bits + 64  # the coder's state: two words


def test_auto_codes_the_frames_when_that_makes_them_smaller(client):
    story = "Tom and Lily went to the park. They played with a big red ball all day long."
    coded = client.generate(story, mu=10, bits=4, max_new_tokens=2).collect()
    assert coded.payload_encoding == "ans"
    assert coded.usage.bits_per_token < 16 * 4 * 0.95
    # At b = 1 a symbol is a fair coin: coding cannot beat one bit, and its state costs more.
    fair = client.generate(story, mu=10, bits=1, max_new_tokens=2).collect()
    assert (fair.payload_encoding, fair.usage.bits_per_token) == ("packed", 16)


def test_epsilon_of_the_prompt_is_the_exact_epsilon_for_its_length(client):
    bundle = client.bundle()
    result = client.generate(PROMPT, mu=10, bits=4, delta=1e-6, max_new_tokens=2).collect()
    spec = PrivacySpec.from_mu(mu=10, dim=bundle.projection_dim, bits=4, clip=bundle.clip)
    assert result.epsilon_prompt == spec.epsilon(delta=1e-6, tokens=PROMPT_TOKENS)
    assert result.epsilon_token == spec.epsilon(delta=1e-6)
    assert result.delta == 1e-6


def test_a_stale_bundle_digest_is_a_failed_precondition_and_the_server_serves_on(client):
    plan = PromptPlan(PROMPT, PrivacyChoice(mu=10), Sampling(max_new_tokens=2))
    request = plan.prepare(client.manifest().model, client.bundle(), max_payload_bytes=1024)
    header = inference_pb2.GenerateRequest()
    header.CopyFrom(request.messages[0])
    header.header.bundle_digest = "0" * 64
    stale = dataclasses.replace(request, messages=(header, *request.messages[1:]))

    with pytest.raises(PreconditionFailedError) as refused:
        client.send(stale).collect()
    assert refused.value.code == "FAILED_PRECONDITION"
    assert "fetch the current bundle" in refused.value.details
    assert client.send(request).collect().usage.prompt_tokens == PROMPT_TOKENS


def test_a_budget_too_small_refuses_before_anything_reaches_the_server(client, server):
    budget = PrivacyBudget(epsilon=1.0, delta=1e-5)
    before = metric(server, "del_requests_total")
    with pytest.raises(BudgetExceededError):
        client.generate(PROMPT, mu=10, budget=budget).collect()
    assert budget.spent == 0
    assert metric(server, "del_requests_total") == before


def test_a_budget_is_charged_once_per_request(client):
    budget = PrivacyBudget(epsilon=1e6, delta=1e-5)
    result = client.generate(PROMPT, mu=10, delta=1e-5, max_new_tokens=2, budget=budget).collect()
    assert budget.spent == pytest.approx(result.epsilon_prompt)


def test_a_second_client_reuses_the_cached_bundle_without_fetching(config, client):
    path = config.bundle_cache_dir / f"{client.bundle().digest}.safetensors"
    before = path.stat()
    with Client(config) as second:
        second.generate(PROMPT, mu=10, max_new_tokens=2).collect()
    after = path.stat()
    # A fetched bundle is written to a new file and renamed over the old one: new inode.
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_corrupted_cached_bundle_is_deleted_and_fetched_again(server, tmp_path):
    config = ClientConfig(server.target, deadline_s=30, bundle_cache_dir=tmp_path)
    with Client(config) as first:
        digest = first.bundle().digest
    path = tmp_path / f"{digest}.safetensors"
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    with Client(config) as second:
        assert second.bundle().digest == digest
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_max_new_tokens_over_the_server_limit_is_refused_before_anything_is_sent(client, server):
    # The manifest advertises the limit, so no privacy is spent on a request bound to fail;
    # the server's own RESOURCE_EXHAUSTED is tested on the wire (tests/server/test_service.py).
    limit = client.manifest().model.max_new_tokens
    budget = PrivacyBudget(epsilon=1e6, delta=1e-5)
    before = metric(server, "del_requests_total")
    with pytest.raises(LimitExceededError, match=f"max_new_tokens {limit + 1} exceeds .* {limit}"):
        client.generate(PROMPT, mu=10, max_new_tokens=limit + 1, budget=budget).collect()
    assert budget.spent == 0
    assert metric(server, "del_requests_total") == before


def test_breaking_out_of_the_stream_cancels_the_call_on_the_server(client, server):
    cancelled = requests_with_code(server, "CANCELLED")
    generation = client.generate(PROMPT, mechanism="raw", temperature=0, max_new_tokens=128)
    for _ in generation:
        break
    wait_for_cancellation(server, cancelled)
    with pytest.raises(RuntimeError, match="stopped early"):
        _ = generation.result


def test_closing_an_async_generation_cancels_the_call_on_the_server(config, server):
    cancelled = requests_with_code(server, "CANCELLED")

    async def start_then_stop() -> None:
        async with AsyncClient(config) as async_client:
            generation = async_client.generate(
                PROMPT, mechanism="raw", temperature=0, max_new_tokens=128
            )
            async with generation:
                async for _ in generation:
                    break

    asyncio.run(start_then_stop())
    wait_for_cancellation(server, cancelled)


def test_an_unreachable_server_raises_server_unavailable(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ClientConfig(f"127.0.0.1:{port}", deadline_s=5, bundle_cache_dir=tmp_path)
    with Client(config) as client, pytest.raises(ServerUnavailableError):
        client.manifest()


def test_cli_generate_json_prints_the_reference_greedy_continuation(
    server, reference, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DEL_CACHE_DIR", str(tmp_path))
    main(
        [
            "generate",
            PROMPT,
            "--server",
            server.target,
            "--mechanism",
            "raw",
            "--temperature",
            "0",
            "--max-new-tokens",
            "60",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert PROMPT + out["text"] == reference["greedy_text"]
    assert out["token_ids"] == reference["greedy_ids_60"][5:]
    assert out["mechanism"] == "raw"
    assert out["finish_reason"] == "length"
    assert out["epsilon_prompt"] is None
    assert out["epsilon_token"] is None
    assert out["usage"]["wire_bytes_received"] == out["client_wire_bytes_sent"]
    assert "NO PRIVACY" in captured.err


def test_cli_generate_streams_the_prompt_and_continuation_then_a_summary(
    server, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DEL_CACHE_DIR", str(tmp_path))
    coded = ["--payload-encoding", "ans", "--max-new-tokens", "8"]
    main(["generate", PROMPT, "--server", server.target, "--mu", "10", *coded])
    captured = capsys.readouterr()
    assert captured.out.startswith(PROMPT)
    assert "payload bits per prompt token (binomial, ans)" in captured.err
    assert "for the 4-token prompt, at δ = 1e-05 (exact)" in captured.err
    packed = ["--payload-encoding", "packed", "--max-new-tokens", "2"]
    main(["generate", PROMPT, "--server", server.target, "--mu", "10", *packed])
    assert "64 payload bits per prompt token (binomial, packed)" in capsys.readouterr().err


def test_cli_manifest_json_describes_the_served_model(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEL_CACHE_DIR", str(tmp_path))
    main(["manifest", "--server", server.target, "--json"])
    model = json.loads(capsys.readouterr().out)["models"][0]
    assert model["model_id"] == "stories260K"
    assert model["projection_dim"] == 16
    assert model["raw_mechanism_enabled"]
    assert re.fullmatch(r"[0-9a-f]{64}", model["client_bundle_digest"])


def test_cli_reports_a_server_refusal_and_exits_2(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEL_CACHE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "generate",
                PROMPT,
                "--server",
                server.target,
                "--mu",
                "10",
                "--max-new-tokens",
                "1000",
            ]
        )
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("del-client: error: max_new_tokens 1000 exceeds")


def test_without_a_privacy_choice_a_server_with_no_levels_is_refused(
    server, tmp_path, monkeypatch, capsys
):
    """No stale default: with no calibrated level to fall back on, the user must choose."""
    monkeypatch.setenv("DEL_CACHE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        main(["generate", PROMPT, "--server", server.target])
    assert exited.value.code == 2
    assert "offers no calibrated privacy level: choose one yourself" in capsys.readouterr().err
