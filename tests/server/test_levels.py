"""Privacy levels: what the manifest publishes of each, and which soft prompt a request gets.

A request gets a level's soft prompt when it names the level, or when its parameters are the
level's (A and c to a relative LEVEL_TOLERANCE, k and b exactly); anything else is served
without one, and the Final says so. It never gets another level's prompt.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import torch

from del_client import Client, ClientBundle, ClientConfig
from del_client.codec import RawSpec, encode_frames, mechanism_params
from del_client.mechanism import BinomialQuantizer, PrivacySpec
from del_client.proto import inference_pb2, inference_pb2_grpc
from del_client.randomness import seeded_generator_for_tests
from del_server.adapter import Adapter
from del_server.levels import LEVEL_TOLERANCE, adapter_levels, choose_level, level_id
from del_server.settings import Settings

ADAPTER = Path(__file__).resolve().parents[2] / "del_server" / "adapters" / "stories260K"
END = inference_pb2.GenerateRequest(end=inference_pb2.End())
USED, NO_LEVEL = inference_pb2.SOFT_PROMPT_USED, inference_pb2.SOFT_PROMPT_NO_LEVEL
NOT_TRAINED = inference_pb2.SOFT_PROMPT_NOT_TRAINED


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter.load(ADAPTER)


def test_level_ids_name_the_target_attack_rate():
    assert [level_id(t) for t in (0.05, 0.1, 0.2, 0.125)] == ["t0.05", "t0.10", "t0.20", "t0.125"]


def test_every_calibrated_level_with_its_soft_prompt_and_the_parameters_to_send(adapter):
    levels = adapter_levels(adapter)
    assert [level.id for level in levels] == ["t0.05", "t0.10", "t0.20"]
    for level, calibrated in zip(levels, adapter.calibration, strict=True):
        assert level.soft_prompt
        assert level.mu == calibrated.mu
        k, K, c, mu = 16, 2**calibrated.bits - 1, adapter.clip, level.mu
        assert level.spec.scale == pytest.approx(c * math.sqrt(4 * k * K + mu**2) / mu, rel=1e-12)
        assert (level.spec.dim, level.spec.bits, level.spec.clip) == (16, 4, adapter.clip)


def test_soft_prompts_trained_at_other_bits_or_other_mus_are_levels_of_their_own(adapter):
    prompts = {**adapter.soft_prompts, 3.0: torch.zeros(8, 64)}
    other = Adapter(
        adapter.down,
        adapter.up,
        adapter.mean,
        adapter.clip,
        soft_prompts=prompts,
        calibration=adapter.calibration,
        metadata={**adapter.metadata, "bits": 2},
    )
    levels = {level.id: level for level in adapter_levels(other)}
    assert not any(levels[f"t0.{rate}"].soft_prompt for rate in ("05", "10", "20"))
    assert levels["mu3"].soft_prompt
    assert levels["mu3"].calibration is None
    assert levels["mu3"].spec.bits == 2
    assert len(levels) == 3 + 4  # the three calibrated levels, and four soft prompts at b = 2


def test_a_request_matches_a_level_to_the_tolerance_and_no_further(adapter):
    levels = adapter_levels(adapter)
    level = levels[1]
    spec = level.spec

    def at(**changes) -> PrivacySpec:
        return PrivacySpec(
            **{
                **{f: getattr(spec, f) for f in ("dim", "bits", "clip")},
                "scale": spec.scale,
                **changes,
            }
        )

    assert choose_level(levels, "", spec).level is level
    assert (
        choose_level(levels, "", at(scale=spec.scale * (1 + LEVEL_TOLERANCE / 10))).level is level
    )
    for off in (at(scale=spec.scale * (1 + 1e-6)), at(clip=spec.clip * 0.9), at(bits=2)):
        choice = choose_level(levels, "", off)
        assert (choice.level, choice.soft_prompt, choice.soft_prompt_mu) == (None, NO_LEVEL, None)
    assert choose_level(levels, "t0.10", spec).soft_prompt_mu == level.mu


def fetch(stub, digest: str) -> ClientBundle:
    chunks = stub.FetchClientBundle(inference_pb2.FetchClientBundleRequest(digest=digest))
    return ClientBundle.from_bytes(b"".join(c.data for c in chunks), expected_digest=digest)


def frames(spec, data) -> list[inference_pb2.GenerateRequest]:
    return [inference_pb2.GenerateRequest(frame=f) for f in encode_frames(data, spec)]


def private_request(bundle, spec, text="Once upon a time"):
    """Header, frames and End of a greedy private request (the tokens after BOS)."""
    symbols = BinomialQuantizer(spec, rng=seeded_generator_for_tests(0)).privatize(
        bundle.embed(bundle.encode(text)[1:])
    )
    header = inference_pb2.StreamHeader(
        mechanism=mechanism_params(spec),
        bundle_digest=bundle.digest,
        sampling=inference_pb2.SamplingParams(temperature=0, max_new_tokens=4),
    )
    return [inference_pb2.GenerateRequest(header=header), *frames(spec, symbols), END]


def status_of(stub, messages) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failure:
        list(stub.Generate(iter(messages)))
    return failure.value.code()


@pytest.fixture(scope="module")
def leveled(serve, stories260k, tmp_path_factory):
    """A server with the default model's trained adapter, three levels with soft prompts,
    without its particle reader (which reads prompts instead of the soft prompts:
    test_particle_reader.py)."""
    unread = replace(Adapter.load(ADAPTER), reader=None)
    directory = unread.save(tmp_path_factory.mktemp("adapter"))
    settings = Settings(
        model=str(stories260k), adapter=str(directory), port=0, metrics_port=-1, enable_raw=True
    )
    with serve(settings) as loopback:
        yield loopback


@pytest.fixture(scope="module")
def stub(leveled):
    with grpc.insecure_channel(leveled.target) as channel:
        yield inference_pb2_grpc.SplitInferenceStub(channel)


@pytest.fixture(scope="module")
def model(stub):
    return stub.GetManifest(inference_pb2.GetManifestRequest()).models[0]


@pytest.fixture(scope="module")
def bundle(stub, model):
    return fetch(stub, model.client_bundle_digest)


def test_the_manifest_gives_each_level_everything_a_client_sends(model, bundle, adapter):
    assert model.level_tolerance == LEVEL_TOLERANCE
    assert model.HasField("bos_id")
    assert model.bos_id == bundle.bos_id == 1
    assert [lv.id for lv in model.privacy_levels] == ["t0.05", "t0.10", "t0.20"]
    for level in model.privacy_levels:
        spec = PrivacySpec.from_mu(
            mu=level.mu, dim=bundle.projection_dim, bits=level.bits, clip=bundle.clip
        )
        assert (level.scale, level.clip, level.dim) == (spec.scale, bundle.clip, 16)
        assert level.soft_prompt


def test_the_manifest_gives_each_level_its_utility_and_the_servers_verdict(model, adapter):
    for level, calibrated in zip(model.privacy_levels, adapter.calibration, strict=True):
        assert level.HasField("utility")
        utility = calibrated.utility
        published = {key: getattr(level.utility, key) for key in utility.to_dict()}
        assert published == utility.to_dict()
        assert level.utility.margin == utility.margin > 0
        assert level.utility.better_than_nothing == utility.better_than_nothing


def spec_of(level) -> PrivacySpec:
    return PrivacySpec(dim=level.dim, bits=level.bits, clip=level.clip, scale=level.scale)


def final_of(stub, messages):
    return list(stub.Generate(iter(messages)))[-1].final


def test_a_named_level_gets_its_soft_prompt_and_the_final_says_so(stub, model, bundle):
    for level in model.privacy_levels:
        messages = private_request(bundle, spec_of(level))
        messages[0].header.level_id = level.id
        final = final_of(stub, messages)
        assert (final.level_id, final.soft_prompt) == (level.id, USED)
        assert final.soft_prompt_mu == level.mu


def test_an_unnamed_request_gets_the_soft_prompt_of_the_level_its_parameters_are(
    stub, model, bundle
):
    level = model.privacy_levels[1]
    final = final_of(stub, private_request(bundle, spec_of(level)))
    assert (final.level_id, final.soft_prompt, final.soft_prompt_mu) == (level.id, USED, level.mu)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"scale_factor": 1 + 1e-6}, id="A off by 1e-6"),
        pytest.param({"clip_factor": 0.9}, id="a clip of the client's"),
        pytest.param({"bits": 2}, id="another bit width"),
    ],
)
def test_parameters_of_no_level_get_no_soft_prompt_and_the_final_says_so(
    stub, model, bundle, change
):
    level = model.privacy_levels[0]
    spec = PrivacySpec(
        dim=level.dim,
        bits=change.get("bits", level.bits),
        clip=level.clip * change.get("clip_factor", 1),
        scale=level.scale * change.get("scale_factor", 1),
    )
    final = final_of(stub, private_request(bundle, spec))
    assert (final.level_id, final.soft_prompt) == ("", NO_LEVEL)
    assert not final.HasField("soft_prompt_mu")  # never another level's prompt


@pytest.mark.parametrize(
    ("name", "scale_factor"),
    [
        pytest.param("t0.99", 1, id="unknown level"),
        pytest.param("t0.05", 1 + 1e-6, id="parameters unlike the level's"),
        pytest.param("t0.10", 1, id="another level's name"),
    ],
)
def test_a_named_level_the_header_is_not_is_invalid_argument(
    stub, model, bundle, name, scale_factor
):
    level = model.privacy_levels[0]
    spec = PrivacySpec(level.dim, level.bits, level.clip, level.scale * scale_factor)
    messages = private_request(bundle, spec)
    messages[0].header.level_id = name
    assert status_of(stub, messages) == grpc.StatusCode.INVALID_ARGUMENT


def raw_request(stub, model, ids):
    raw = fetch(stub, model.raw_bundle_digest)
    spec = RawSpec(dim=raw.dim)
    header = inference_pb2.StreamHeader(
        mechanism=mechanism_params(spec),
        bundle_digest=raw.digest,
        sampling=inference_pb2.SamplingParams(temperature=0, max_new_tokens=4),
    )
    return [inference_pb2.GenerateRequest(header=header), *frames(spec, raw.embed(ids)), END], raw


def test_raw_streams_name_no_level_and_never_start_with_bos(stub, model, bundle):
    ids = bundle.encode("Once upon a time")  # BOS first, as encode() gives it
    assert ids[0] == model.bos_id
    good, _ = raw_request(stub, model, ids[1:])
    assert final_of(stub, good).soft_prompt == inference_pb2.SOFT_PROMPT_RAW
    with_bos, _ = raw_request(stub, model, ids)
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Generate(iter(with_bos)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BOS" in refused.value.details()
    named, _ = raw_request(stub, model, ids[1:])
    named[0].header.level_id = "t0.10"
    assert status_of(stub, named) == grpc.StatusCode.INVALID_ARGUMENT
    scaled, _ = raw_request(stub, model, ids[1:])
    scaled[0].header.mechanism.clip = 1.0
    assert status_of(stub, scaled) == grpc.StatusCode.INVALID_ARGUMENT


def test_the_python_client_names_the_level_it_chose(leveled, model, tmp_path):
    config = ClientConfig(leveled.target, bundle_cache_dir=tmp_path)
    most_private, middle = model.privacy_levels[0], model.privacy_levels[1]
    with Client(config) as client:
        default = client.generate("Once upon a time", max_new_tokens=2).collect()
        chosen = client.generate("Once upon a time", level=0.10, max_new_tokens=2).collect()
        by_mu = client.generate("Once upon a time", mu=middle.mu, max_new_tokens=2).collect()
        other_bits = client.generate("Once upon a time", level=0.10, bits=2, max_new_tokens=2)
        other_bits = other_bits.collect()
    assert (default.level_id, default.soft_prompt) == (most_private.id, "used")
    assert (chosen.level_id, chosen.soft_prompt) == (middle.id, "used")
    assert chosen.soft_prompt_mu == middle.mu
    assert (by_mu.level_id, by_mu.soft_prompt) == (middle.id, "used")  # matched by A
    assert (other_bits.level_id, other_bits.soft_prompt) == ("", "no level")
