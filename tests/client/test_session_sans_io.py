"""The clients' sans-I/O core, without a server: what a prompt becomes on the wire, what is
refused before any privacy is spent, and what the replies mean.

A tiny bundle (five words, k = 4) and a manifest written by hand stand in for the server's.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from del_client.budget import PrivacyBudget
from del_client.bundle import ClientBundle
from del_client.classification import classification_result
from del_client.codec import FrameAssembler, spec_from_params
from del_client.errors import (
    LimitExceededError,
    PrivacyParameterError,
    ProtocolError,
    RequestOptionError,
)
from del_client.manifest import BundleDownload, ModelInfo, PrivacyLevel
from del_client.mechanism import PrivacySpec
from del_client.parameters import DEFAULT_DELTA, SUPPORTED_BITS, wire_bytes
from del_client.proto import inference_pb2
from del_client.request import NOT_PRIVATE, PrivacyChoice, PromptPlan
from del_client.results import Receipt, ReplyFolder
from del_client.sampling import Sampling

PROMPT = "once upon a time"
DIM, CLIP = 4, 1.0


def tokenizer() -> Tokenizer:
    words = {"<s>": 0, "once": 1, "upon": 2, "a": 3, "time": 4}
    tok = Tokenizer(WordLevel(words, unk_token="<s>"))
    tok.pre_tokenizer = Whitespace()
    return tok


BUNDLE = ClientBundle(
    "tiny",
    tokenizer(),
    np.random.default_rng(0).normal(0, 0.5, (5, DIM)).astype(np.float32),
    clip=CLIP,
    bos_id=0,
)


def level(target: float, mu: float, bits: int = 4) -> PrivacyLevel:
    spec = PrivacySpec.from_mu(mu=mu, dim=DIM, bits=bits, clip=CLIP)
    return PrivacyLevel(
        mu=mu,
        epsilon_token=spec.epsilon(delta=DEFAULT_DELTA),
        delta=DEFAULT_DELTA,
        bits=bits,
        target_attack_rate=target,
        soft_prompt=True,
        id=f"t{target:.2f}",
        scale=spec.scale,
        clip=CLIP,
        dim=DIM,
    )


def model(**limits) -> ModelInfo:
    """The manifest's model: two calibrated levels, the most private first."""
    return ModelInfo(
        model_id="tiny",
        hidden_size=8,
        projection_dim=DIM,
        clip=CLIP,
        supported_bits=SUPPORTED_BITS,
        soft_prompt_mus=(2.0, 5.0),
        client_bundle_digest=BUNDLE.digest,
        max_prompt_tokens=limits.get("max_prompt_tokens", 64),
        max_new_tokens=limits.get("max_new_tokens", 64),
        raw_mechanism_enabled=False,
        raw_bundle_digest="",
        privacy_levels=(level(0.10, 2.0), level(0.20, 5.0)),
        max_frames=limits.get("max_frames", 0),
        max_frame_payload_bytes=limits.get("max_frame_payload_bytes", 0),
        level_tolerance=1e-9,
        bos_id=0,
    )


def plan(privacy: PrivacyChoice | None = None, **options) -> PromptPlan:
    return PromptPlan(
        prompt=options.pop("prompt", PROMPT),
        privacy=privacy or PrivacyChoice(),
        sampling=Sampling(max_new_tokens=options.pop("max_new_tokens", 8)),
        **options,
    )


def prepare(plan: PromptPlan, served: ModelInfo | None = None, max_payload_bytes: int = 1024):
    return plan.prepare(served or model(), BUNDLE, max_payload_bytes=max_payload_bytes)


# ── Choosing the privacy ────────────────────────────────────────────────────────────────


def test_with_no_privacy_option_the_prompt_goes_at_the_servers_most_private_level():
    served = model()
    choice = PrivacyChoice()
    spec = choice.frame_spec(BUNDLE, served)
    assert spec.scale == served.privacy_levels[0].scale  # the manifest's A, not recomputed
    assert choice.level_id(spec, served) == "t0.10"
    assert served.level_of(spec) is served.privacy_levels[0]


def test_a_target_attack_rate_chooses_the_level_calibrated_to_it():
    served = model()
    spec = PrivacyChoice(level=0.2).frame_spec(BUNDLE, served)
    assert served.level_of(spec).id == "t0.20"
    with pytest.raises(
        PrivacyParameterError, match=r"no level calibrated to 0.3 \(offered: 0.1, 0.2\)"
    ):
        PrivacyChoice(level=0.3).frame_spec(BUNDLE, served)


def test_a_level_at_other_bits_keeps_its_mu_but_is_no_longer_that_level():
    served = model()
    choice = PrivacyChoice(bits=2)
    spec = choice.frame_spec(BUNDLE, served)
    assert spec == PrivacySpec.from_mu(mu=2.0, dim=DIM, bits=2, clip=CLIP)
    assert choice.level_id(spec, served) == ""  # its soft prompt was not trained for this noise
    assert served.level_of(spec) is None


def test_a_mu_of_the_users_own_is_no_level_of_the_server():
    spec = PrivacyChoice(mu=3.0).frame_spec(BUNDLE, model())
    assert (spec.dim, spec.bits, spec.clip) == (DIM, 4, CLIP)
    assert model().level_of(spec) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mu": 1.0, "epsilon": 1.0}, "give one of mu, epsilon, spec or level"),
        ({"mechanism": "raw", "mu": 1.0}, "raw mechanism sends unprivatized embeddings"),
        ({"mu": 0.0}, "mu must be finite and > 0"),
        ({"delta": 1.0}, r"delta must lie in \(0, 1\)"),
        ({"bits": 9}, r"bits must be in 1\.\.8"),
        ({"level": 10}, "level is a target attack rate in"),
    ],
)
def test_contradictory_or_out_of_range_privacy_is_refused_when_chosen(options, message):
    with pytest.raises(PrivacyParameterError, match=message):
        PrivacyChoice(**options)


# ── What goes on the wire ───────────────────────────────────────────────────────────────


def test_a_prepared_prompt_is_a_header_its_frames_and_an_end_without_bos():
    request = prepare(plan())
    header, *frames, end = request.messages
    assert [header.WhichOneof("kind"), end.WhichOneof("kind")] == ["header", "end"]
    assert header.header.level_id == "t0.10"
    assert header.header.bundle_digest == BUNDLE.digest
    assert request.prompt_tokens == 4  # once upon a time: BOS is the server's to prepend
    spec = spec_from_params(header.header.mechanism)
    assembler = FrameAssembler(spec, max_tokens=64)
    for frame in frames:
        assembler.add(frame.frame)
    assert assembler.tokens == 4
    assert request.wire_bytes == sum(wire_bytes(m) for m in request.messages)


def test_the_request_states_the_exact_privacy_its_parameters_give():
    request = prepare(plan())
    spec = spec_from_params(request.messages[0].header.mechanism)
    assert request.delta == DEFAULT_DELTA
    assert request.epsilon_token == spec.epsilon(delta=DEFAULT_DELTA)
    assert request.epsilon_prompt == spec.epsilon(delta=DEFAULT_DELTA, tokens=4)
    assert request.mu_token == spec.mu()
    assert f"for the 4-token prompt, at δ = {DEFAULT_DELTA:g} (exact)" in request.privacy_note


def test_a_budget_is_charged_once_what_the_request_states():
    budget = PrivacyBudget(epsilon=1e6, delta=DEFAULT_DELTA)
    request = prepare(plan(budget=budget))
    assert budget.spent == pytest.approx(request.epsilon_prompt)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_prompt_tokens": 3}, "the prompt has 4 tokens, over the server's limit of 3"),
        ({"max_new_tokens": 4}, "max_new_tokens 8 exceeds the server's limit of 4"),
    ],
)
def test_a_request_the_server_would_refuse_is_refused_before_privacy_is_spent(limits, message):
    budget = PrivacyBudget(epsilon=1e6, delta=DEFAULT_DELTA)
    with pytest.raises(LimitExceededError, match=f"{message}.*no privacy spent"):
        prepare(plan(budget=budget), model(**limits))
    assert budget.spent == 0


def test_frames_are_no_larger_than_the_server_accepts():
    request = prepare(plan(), model(max_frame_payload_bytes=2), max_payload_bytes=1024)
    frames = [m.frame for m in request.messages if m.WhichOneof("kind") == "frame"]
    assert len(frames) == 4  # 2 bytes hold one token of k = 4 coordinates at b = 4
    assert all(len(frame.payload) <= 2 for frame in frames)


def test_a_prompt_without_tokens_is_refused():
    with pytest.raises(RequestOptionError, match="the prompt has no tokens"):
        prepare(plan(prompt=""))


# ── What came back ──────────────────────────────────────────────────────────────────────


def final(**fields) -> inference_pb2.GenerateResponse:
    usage = inference_pb2.Usage(prompt_tokens=4, generated_tokens=2, payload_bits=64)
    return inference_pb2.GenerateResponse(
        final=inference_pb2.Final(
            finish_reason=inference_pb2.FINISH_REASON_LENGTH,
            usage=usage,
            timings=inference_pb2.Timings(time_to_first_token_s=0.1, total_s=0.2),
            **fields,
        )
    )


def tokens(ids: list[int], text: str) -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(tokens=inference_pb2.TokenChunk(token_ids=ids, text=text))


def test_replies_fold_into_the_streamed_text_and_a_result_of_what_was_kept_private():
    request = prepare(plan())
    folder = ReplyFolder(request)
    deltas = [folder.feed(tokens([7], " there")), folder.feed(tokens([8], " was"))]
    assert deltas == [" there", " was"]
    assert folder.feed(final(level_id="t0.10", soft_prompt=inference_pb2.SOFT_PROMPT_USED)) == ""
    result = folder.result()
    assert (result.text, result.token_ids, result.finish_reason) == (" there was", (7, 8), "length")
    assert (result.level_id, result.soft_prompt) == ("t0.10", "used")
    assert (result.private, result.privacy_note) == (True, request.privacy_note)
    assert (result.delta, result.epsilon_prompt) == (request.delta, request.epsilon_prompt)
    assert result.client_wire_bytes_sent == request.wire_bytes
    assert (result.usage.generated_tokens, result.timings.total_s) == (2, 0.2)
    assert result.request_id == request.request_id


def test_a_generation_and_a_classification_state_what_was_kept_private_alike():
    request = prepare(plan())
    folder = ReplyFolder(request)
    folder.feed(final(level_id="t0.10", soft_prompt=inference_pb2.SOFT_PROMPT_USED))
    generated = folder.result()
    answer = final(level_id="t0.10", soft_prompt=inference_pb2.SOFT_PROMPT_USED).final
    classified = classification_result(
        request,
        inference_pb2.ClassifyResponse(
            label="positive",
            probabilities=[inference_pb2.LabelProbability(label="positive", probability=1.0)],
            usage=answer.usage,
            timings=answer.timings,
            level_id=answer.level_id,
            soft_prompt=answer.soft_prompt,
        ),
    )
    shared = [f.name for f in fields(Receipt)]
    assert [getattr(generated, n) for n in shared] == [getattr(classified, n) for n in shared]
    assert list(generated.to_dict())[:4] == ["text", "token_ids", "finish_reason", "soft_prompt_mu"]
    assert list(classified.to_dict()) == ["label", "probabilities", *shared]


def test_a_raw_request_states_that_nothing_was_private():
    request = prepare(plan())
    raw = type(request)(request.request_id, "raw", request.messages, 4, None, None, None, None)
    folder = ReplyFolder(raw)
    folder.feed(final(soft_prompt=inference_pb2.SOFT_PROMPT_RAW))
    result = folder.result()
    assert (result.private, result.epsilon_prompt, result.privacy_note) == (
        False,
        None,
        NOT_PRIVATE,
    )


def test_a_stream_without_its_final_or_with_a_reply_after_it_breaks_the_contract():
    folder = ReplyFolder(prepare(plan()))
    folder.feed(tokens([7], " there"))
    with pytest.raises(ProtocolError, match="without its Final"):
        folder.result()
    folder.feed(final())
    with pytest.raises(ProtocolError, match="after its Final"):
        folder.feed(tokens([8], " was"))


def test_a_bundle_download_is_taken_in_order_and_checked_against_its_digest():
    data = BUNDLE.to_bytes()
    download = BundleDownload(BUNDLE.digest)
    half = len(data) // 2
    for offset in (0, half):
        end = half if offset == 0 else len(data)
        chunk = data[offset:end]
        download.feed(inference_pb2.BundleChunk(data=chunk, offset=offset, total_size=len(data)))
    assert download.bundle().digest == BUNDLE.digest
    out_of_order = BundleDownload(BUNDLE.digest)
    with pytest.raises(ProtocolError, match="expected 0"):
        out_of_order.feed(inference_pb2.BundleChunk(data=data, offset=1, total_size=len(data)))
