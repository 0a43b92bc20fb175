"""The gRPC service on loopback, driven with the raw generated stubs: protocol and statuses.

These tests speak the wire contract directly (as any gRPC client with only the .proto would),
so they check the server, not the SDK.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import re
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from del_client.bundle import ClientBundle
from del_client.codec import RawSpec, encode_frames, mechanism_params
from del_client.mechanism import BinomialQuantizer, PrivacySpec
from del_client.proto import frames_pb2, inference_pb2, inference_pb2_grpc
from del_client.randomness import seeded_generator_for_tests
from del_client.symbol_model import model_for
from del_server.logs import JsonFormatter


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return inference_pb2_grpc.SplitInferenceStub(channel)


@pytest.fixture(scope="module")
def manifest(stub):
    return stub.GetManifest(inference_pb2.GetManifestRequest()).models[0]


def fetch(stub, digest: str) -> ClientBundle:
    chunks = stub.FetchClientBundle(inference_pb2.FetchClientBundleRequest(digest=digest))
    return ClientBundle.from_bytes(b"".join(c.data for c in chunks), expected_digest=digest)


@pytest.fixture(scope="module")
def bundle(stub, manifest):
    return fetch(stub, manifest.client_bundle_digest)


@pytest.fixture(scope="module")
def spec(bundle):
    return PrivacySpec.from_mu(mu=50.0, dim=bundle.projection_dim, bits=4, clip=bundle.clip)


def header(spec, digest, encoding="packed", **sampling):
    sampling = {"temperature": 0.0, "max_new_tokens": 8, **sampling}
    return inference_pb2.GenerateRequest(
        header=inference_pb2.StreamHeader(
            mechanism=mechanism_params(spec, encoding),
            bundle_digest=digest,
            sampling=inference_pb2.SamplingParams(**sampling),
        )
    )


def frames(spec, data, model=None):
    return [inference_pb2.GenerateRequest(frame=f) for f in encode_frames(data, spec, model=model)]


END = inference_pb2.GenerateRequest(end=inference_pb2.End())


def private_request(bundle, spec, text="Once upon a time", encoding="packed", **sampling):
    ids = bundle.encode(text)[1:]  # the server adds the clean BOS itself
    symbols = BinomialQuantizer(spec, rng=seeded_generator_for_tests(0)).privatize(
        bundle.embed(ids)
    )
    model = model_for(bundle, spec) if encoding == "ans" else None
    return [header(spec, bundle.digest, encoding, **sampling), *frames(spec, symbols, model), END]


def status_of(stub, messages) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failure:
        list(stub.Generate(iter(messages)))
    return failure.value.code()


def metric(server, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name}{labels} not exported"
    return float(match.group(1))


def test_health_reports_serving(channel):
    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    named = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="del.v1.SplitInference")
    )
    assert named.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_split_inference_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in response.list_services_response.service}
    assert {"del.v1.SplitInference", "grpc.health.v1.Health"} <= names


def test_reflection_v1_is_served_beside_v1alpha_and_describes_every_service(channel):
    """v1 is v1alpha's protocol under another name: v1alpha's classes speak it on the wire."""
    from google.protobuf import descriptor_pb2

    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    symbols = ["del.v1.SplitInference", "grpc.reflection.v1.ServerReflection"]
    requests = [reflection_pb2.ServerReflectionRequest(list_services="")]
    requests += [reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in symbols]
    listed, *described = list(info(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "del.v1.SplitInference",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    for symbol, response in zip(symbols, described, strict=True):
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(data)
            for data in response.file_descriptor_response.file_descriptor_proto
        ]
        services = {f"{f.package}.{s.name}" for f in files for s in f.service}
        assert symbol in services


def test_manifest_describes_the_model_and_its_bundle(manifest, bundle):
    assert manifest.model_id == "stories260K"
    assert manifest.hidden_size == 64
    assert manifest.projection_dim == bundle.projection_dim == 16
    assert manifest.clip == pytest.approx(bundle.clip)
    assert list(manifest.supported_bits) == list(range(1, 9))
    assert manifest.raw_mechanism_enabled
    assert bundle.vocab_size == 512


def test_fetch_rejects_an_unknown_digest(stub):
    with pytest.raises(grpc.RpcError) as failure:
        list(stub.FetchClientBundle(inference_pb2.FetchClientBundleRequest(digest="00" * 32)))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_private_generation_streams_tokens_then_one_final(stub, bundle, spec):
    responses = list(stub.Generate(iter(private_request(bundle, spec, max_new_tokens=12))))
    kinds = [r.WhichOneof("kind") for r in responses]
    assert kinds[-1] == "final"
    assert set(kinds[:-1]) == {"tokens"}
    final = responses[-1].final
    ids = [i for r in responses[:-1] for i in r.tokens.token_ids]
    assert final.usage.generated_tokens == len(ids)
    assert final.finish_reason in (
        inference_pb2.FINISH_REASON_LENGTH,
        inference_pb2.FINISH_REASON_EOS,
    )
    assert final.usage.prompt_tokens == 4
    assert final.usage.bits_per_token == spec.bits_per_token
    assert not final.HasField("soft_prompt_mu")  # the PCA default has no soft prompts


def test_usage_counts_exactly_the_bytes_that_crossed_the_wire(stub, bundle, spec):
    messages = private_request(bundle, spec)
    responses = list(stub.Generate(iter(messages)))
    usage = responses[-1].final.usage
    assert usage.wire_bytes_received == sum(m.ByteSize() + 5 for m in messages)
    assert usage.wire_bytes_sent == sum(r.ByteSize() + 5 for r in responses[:-1])
    assert usage.payload_bits == usage.prompt_tokens * spec.bits_per_token
    assert 8 * sum(len(m.frame.payload) for m in messages[1:-1]) - usage.payload_bits < 8


def test_raw_mechanism_reproduces_the_reference_greedy_continuation(stub, manifest, shared_dir):
    reference = json.loads((shared_dir / "models/stories260K/reference_greedy.json").read_text())
    raw = fetch(stub, manifest.raw_bundle_digest)
    spec = RawSpec(dim=raw.dim)
    ids = raw.encode(reference["prompt"])
    assert ids == reference["prompt_ids"]
    messages = [header(spec, raw.digest, max_new_tokens=60), *frames(spec, raw.embed(ids[1:])), END]
    responses = list(stub.Generate(iter(messages)))
    generated = [i for r in responses[:-1] for i in r.tokens.token_ids]
    text = "".join(r.tokens.text for r in responses[:-1])
    assert generated == reference["greedy_ids_60"][len(ids) :]
    assert reference["prompt"] + text == reference["greedy_text"]


def test_stop_sequences_end_generation_and_are_not_emitted(stub, manifest, shared_dir):
    raw = fetch(stub, manifest.raw_bundle_digest)
    spec = RawSpec(dim=raw.dim)
    ids = raw.encode("Once upon a time")[1:]
    messages = [
        header(spec, raw.digest, max_new_tokens=60, stop=["Lily"]),
        *frames(spec, raw.embed(ids)),
        END,
    ]
    responses = list(stub.Generate(iter(messages)))
    assert responses[-1].final.finish_reason == inference_pb2.FINISH_REASON_STOP
    assert "".join(r.tokens.text for r in responses[:-1]) == ", there was a little girl named "


def test_seeded_sampling_is_reproducible(stub, bundle, spec):
    def run():
        messages = private_request(bundle, spec, temperature=0.9, top_p=0.9, top_k=40, seed=7)
        return [i for r in stub.Generate(iter(messages)) for i in r.tokens.token_ids]

    assert run() == run()


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda m: m[1:], id="no header"),
        pytest.param(lambda m: m[:-1], id="no end marker"),
        pytest.param(lambda m: [m[0], m[0], *m[1:]], id="two headers"),
        pytest.param(lambda m: [m[0], m[-1]], id="no frames"),
        pytest.param(lambda m: [m[0], m[1], m[1], m[-1]], id="repeated frame"),
    ],
)
def test_malformed_streams_get_invalid_argument(stub, bundle, spec, mutate):
    assert (
        status_of(stub, mutate(private_request(bundle, spec))) == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_malformed_frames_get_invalid_argument_and_the_server_keeps_serving(stub, bundle, spec):
    messages = private_request(bundle, spec)
    truncated = frames_pb2.Frame()
    truncated.CopyFrom(messages[1].frame)
    truncated.payload = truncated.payload[:-1]
    bad_bits = frames_pb2.Frame()
    bad_bits.CopyFrom(messages[1].frame)
    bad_bits.bits = 3
    for frame in (truncated, bad_bits):
        broken = [messages[0], inference_pb2.GenerateRequest(frame=frame), END]
        assert status_of(stub, broken) == grpc.StatusCode.INVALID_ARGUMENT
    bad_scale = header(spec, bundle.digest)
    bad_scale.header.mechanism.scale = spec.clip / 2
    assert status_of(stub, [bad_scale, *messages[1:]]) == grpc.StatusCode.INVALID_ARGUMENT
    assert list(stub.Generate(iter(messages)))[-1].WhichOneof("kind") == "final"


def test_a_stale_bundle_digest_gets_failed_precondition(stub, bundle, spec):
    messages = private_request(bundle, spec)
    messages[0].header.bundle_digest = "ab" * 32
    assert status_of(stub, messages) == grpc.StatusCode.FAILED_PRECONDITION


def test_limits_get_resource_exhausted(stub, bundle, spec):
    too_many_new = private_request(bundle, spec, max_new_tokens=129)
    assert status_of(stub, too_many_new) == grpc.StatusCode.RESOURCE_EXHAUSTED
    long_prompt = private_request(bundle, spec, text="the cat sat on the mat " * 60)
    assert status_of(stub, long_prompt) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metrics_count_a_request_with_its_wire_bytes(server, stub, bundle, spec):
    before_ok = metric(server, "del_requests_total", '{code="OK"}')
    before_in = metric(server, "del_wire_received_bytes_total")
    before_bits = metric(server, "del_payload_bits_total", '{mechanism="binomial"}')
    messages = private_request(bundle, spec)
    final = list(stub.Generate(iter(messages)))[-1].final
    assert metric(server, "del_requests_total", '{code="OK"}') == before_ok + 1
    assert (
        metric(server, "del_wire_received_bytes_total")
        == before_in + final.usage.wire_bytes_received
    )
    assert (
        metric(server, "del_payload_bits_total", '{mechanism="binomial"}')
        == before_bits + final.usage.payload_bits
    )
    for name in (
        "del_time_to_first_token_seconds_count",
        "del_e2e_request_latency_seconds_count",
        "del_epsilon_per_prompt_count",
        "del_compression_ratio_count",
    ):
        labels = '{mechanism="binomial"}' if name.startswith("del_compression") else ""
        assert metric(server, name, labels) >= 1


def test_metrics_show_the_kv_cache(server, stub, bundle, spec):
    list(stub.Generate(iter(private_request(bundle, spec))))
    allocated = metric(server, "del_kv_cache_bytes", '{kind="allocated"}')
    assert allocated > 0  # the buffers stay for the next requests
    assert 0 <= metric(server, "del_kv_cache_bytes", '{kind="used"}') <= allocated


def wait_for_idle(server, timeout_s: float = 20.0) -> float:
    deadline = time.monotonic() + timeout_s
    while (running := metric(server, "del_num_requests_running")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


def test_cancelling_mid_stream_frees_the_slot(server, stub, bundle, spec):
    before = metric(server, "del_requests_total", '{code="CANCELLED"}')
    call = stub.Generate(iter(private_request(bundle, spec, max_new_tokens=128, temperature=1.0)))
    next(call)  # the first token arrived: the sequence is running
    call.cancel()
    assert wait_for_idle(server) == 0
    deadline = time.monotonic() + 10
    while (
        metric(server, "del_requests_total", '{code="CANCELLED"}') == before
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert metric(server, "del_requests_total", '{code="CANCELLED"}') == before + 1


def test_a_deadline_ends_the_stream_and_frees_the_slot(server, stub, bundle, spec):
    call = stub.Generate(iter(private_request(bundle, spec, max_new_tokens=128)), timeout=0.05)
    with pytest.raises(grpc.RpcError) as failure:
        list(call)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for_idle(server) == 0


def test_more_concurrent_streams_than_running_slots_all_complete(stub, bundle, spec):
    def run(seed):
        messages = private_request(bundle, spec, max_new_tokens=16, temperature=1.0, seed=seed)
        return list(stub.Generate(iter(messages)))[-1].final.usage.generated_tokens

    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # the fixture runs 4 at a time
        results = list(pool.map(run, range(6)))
    assert all(1 <= n <= 16 for n in results)


def test_a_request_generates_the_same_tokens_alone_or_batched_with_others(stub, bundle, spec):
    """The engine decodes running requests in one padded batch; no row sees another."""

    def run(text, seed):
        messages = private_request(
            bundle, spec, text, max_new_tokens=24, temperature=0.8, seed=seed
        )
        return [i for r in stub.Generate(iter(messages)) for i in r.tokens.token_ids]

    texts = ["Once upon a time", "The cat sat", "Tom and Lily went to the park to play ball"]
    alone = [run(text, seed) for seed, text in enumerate(texts)]
    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
        together = list(pool.map(run, texts, range(len(texts))))
    assert together == alone


def test_the_manifest_offers_coded_payloads_beside_packed_ones(manifest):
    assert list(manifest.payload_encodings) == [
        frames_pb2.PAYLOAD_ENCODING_PACKED,
        frames_pb2.PAYLOAD_ENCODING_ANS,
    ]


def test_coded_frames_generate_what_the_same_symbols_packed_do(server, stub, bundle, spec):
    text = "Tom and Lily went to the park to play ball with their dog"
    packed = private_request(bundle, spec, text=text)
    coded = private_request(bundle, spec, text=text, encoding="ans")
    before = metric(server, "del_requests_by_payload_encoding_total", '{encoding="ans"}')
    replies = [list(stub.Generate(iter(messages))) for messages in (packed, coded)]
    ids = [[i for r in rs[:-1] for i in r.tokens.token_ids] for rs in replies]
    assert ids[0] == ids[1]
    usage = replies[1][-1].final.usage
    coded_bytes = sum(len(m.frame.payload) for m in coded[1:-1])
    assert usage.payload_bits == 8 * coded_bytes  # the bits actually sent
    assert usage.payload_bits < replies[0][-1].final.usage.payload_bits
    assert usage.wire_bytes_received == sum(m.ByteSize() + 5 for m in coded)
    after = metric(server, "del_requests_by_payload_encoding_total", '{encoding="ans"}')
    assert after == before + 1


def _recoded(messages, payload):
    """`messages` with the first frame's payload replaced."""
    changed = [type(m).FromString(m.SerializeToString()) for m in messages]
    changed[1].frame.payload = payload(changed[1].frame.payload)
    return changed


@pytest.mark.parametrize(
    "payload",
    [
        lambda p: p + b"\x00",  # a zero last byte
        lambda p: p + bytes(-len(p) % 4) + b"\x07\x00\x00\x01",  # a word too many
        lambda p: p[4:],  # a word short: the symbols decode, the coder is not empty
    ],
)
def test_a_malformed_coded_payload_gets_invalid_argument(stub, bundle, spec, payload):
    messages = _recoded(private_request(bundle, spec, encoding="ans"), payload)
    assert status_of(stub, messages) == grpc.StatusCode.INVALID_ARGUMENT


def test_an_unknown_or_inapplicable_encoding_gets_invalid_argument(stub, manifest, bundle, spec):
    unknown = private_request(bundle, spec)
    unknown[0].header.mechanism.payload_encoding = 7
    assert status_of(stub, unknown) == grpc.StatusCode.INVALID_ARGUMENT
    raw = fetch(stub, manifest.raw_bundle_digest)
    raw_spec = RawSpec(dim=raw.dim)
    coded_raw = [
        header(raw_spec, raw.digest),
        *frames(raw_spec, raw.embed(raw.encode("Once upon a time")[1:])),
        END,
    ]
    coded_raw[0].header.mechanism.payload_encoding = frames_pb2.PAYLOAD_ENCODING_ANS
    assert status_of(stub, coded_raw) == grpc.StatusCode.INVALID_ARGUMENT


def test_private_frames_carry_no_more_than_k_times_b_bits_per_token(stub, bundle, spec):
    messages = private_request(bundle, spec)
    payload = sum(len(m.frame.payload) for m in messages[1:-1])
    assert payload == np.ceil(4 * spec.bits_per_token / 8)


def finished_lines(caplog, request_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.getMessage() == "request finished" and getattr(r, "request_id", None) == request_id
    ]


def test_every_request_leaves_one_log_line_with_sizes_and_timings_but_no_text(
    caplog, stub, bundle, spec
):
    messages = private_request(bundle, spec, text="Once upon a time")
    messages[0].header.request_id = "log-line-check"
    with caplog.at_level(logging.INFO, logger="del_server.service"):
        responses = list(stub.Generate(iter(messages)))
    (record,) = finished_lines(caplog, "log-line-check")
    usage, text = responses[-1].final.usage, "".join(r.tokens.text for r in responses[:-1])
    assert (record.status, record.mechanism, record.privacy_level) == ("OK", "binomial", "none")
    assert record.mu == pytest.approx(spec.mu())
    assert (record.prompt_tokens, record.generated_tokens) == (4, usage.generated_tokens)
    assert record.wire_received_bytes == usage.wire_bytes_received
    assert record.wire_sent_bytes == sum(r.ByteSize() + 5 for r in responses)  # Final too
    assert 0 < record.time_to_first_token_s <= record.total_s
    line = JsonFormatter().format(record)
    assert json.loads(line)["level"] == "INFO"
    assert text.strip()
    assert text.strip() not in line
    assert "upon a time" not in line


def test_an_internal_error_names_a_request_id_that_the_log_has(
    caplog, server, monkeypatch, stub, bundle, spec
):
    def fail(prompt):
        raise RuntimeError("a bug with a secret in its message")

    monkeypatch.setattr(server.running.served.prompts, "build", fail)
    messages = private_request(bundle, spec)
    messages[0].header.request_id = "internal-check"
    with (
        caplog.at_level(logging.INFO, logger="del_server.service"),
        pytest.raises(grpc.RpcError) as failure,
    ):
        list(stub.Generate(iter(messages)))
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert failure.value.details() == (
        "internal error; the server log has its details under request id internal-check"
    )
    (traceback,) = [r for r in caplog.records if r.getMessage() == "Generate failed"]
    assert traceback.request_id == "internal-check"
    assert traceback.exc_info
    assert finished_lines(caplog, "internal-check")[0].status == "INTERNAL"


def test_a_unary_method_that_fails_is_internal_with_a_request_id_that_the_log_has(
    caplog, server, monkeypatch, stub, channel
):
    monkeypatch.setattr(server.running.service, "_settings", None)  # GetManifest reads it
    with (
        caplog.at_level(logging.INFO, logger="del_server.interceptors"),
        pytest.raises(grpc.RpcError) as failure,
    ):
        stub.GetManifest(inference_pb2.GetManifestRequest())
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    found = re.fullmatch(
        r"internal error; the server log has its details under request id (\w+)",
        failure.value.details(),
    )
    assert found, failure.value.details()
    (record,) = [r for r in caplog.records if getattr(r, "request_id", "") == found.group(1)]
    assert record.getMessage() == "/del.v1.SplitInference/GetManifest failed"
    assert record.exc_info
    with pytest.raises(grpc.RpcError) as unknown:  # a status the method chose goes out as is
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="nope"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_observing_many_values_at_once_equals_observing_them_one_by_one():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from del_server.metrics import LATENCY_BUCKETS_S, observe_all

    values = [0.0005, 0.001, 0.003, 0.003, 0.2, 7.0, 1e9, 0.0]
    texts = []
    for observe in (lambda h: [h.observe(v) for v in values], lambda h: observe_all(h, values)):
        registry = CollectorRegistry()
        observe(Histogram("latency", "seconds", buckets=LATENCY_BUCKETS_S, registry=registry))
        texts.append(
            b"\n".join(
                line for line in generate_latest(registry).splitlines() if b"created" not in line
            )
        )
    assert texts[0] == texts[1]
