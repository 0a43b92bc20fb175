"""Private classification on a real pretrained encoder: all-MiniLM-L6-v2 with the committed
SST-2 adapter, through a real gRPC server on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from del_client import AsyncClient, Client, ClientConfig
from del_client.cli import main
from del_client.errors import InvalidRequestError, RequestOptionError
from del_client.evaluation import evaluate_file
from del_client.proto import inference_pb2, inference_pb2_grpc
from del_server.settings import DEFAULT_NLU_ADAPTER, Settings
from del_server.train.labelled import read_tsv

# Dev sentences (the project never trains on dev.tsv): a few for the RPC, more for accuracy.
RPC_SENTENCES = 4
ACCURACY_SENTENCES = 96


@pytest.fixture(scope="module")
def classifier(serve) -> Iterator:
    settings = Settings(
        model="all-MiniLM-L6-v2",
        adapter=DEFAULT_NLU_ADAPTER,
        port=0,
        metrics_port=0,
        enable_raw=True,
        max_running=16,
        grace_s=1.0,
    )
    with serve(settings) as loopback:
        yield loopback


@pytest.fixture(scope="module")
def client(classifier) -> Iterator[Client]:
    with Client(ClientConfig(classifier.target)) as c:
        yield c


@pytest.fixture(scope="module")
def dev(shared_dir) -> list[tuple[str, int]]:
    texts, labels = read_tsv(shared_dir / "data" / "sst2" / "dev.tsv")
    return list(zip(texts, labels, strict=True))


def test_the_manifest_names_the_task_and_its_labels(client):
    model = client.manifest().model
    assert model.task == "classify"
    assert model.task_name == "sst2"
    assert model.labels == ("negative", "positive")
    assert model.privacy_levels
    assert all(level.calibrated for level in model.privacy_levels)


def test_a_private_classification_answers_every_label_with_its_exact_epsilon(client, dev):
    text, _ = dev[0]
    result = client.classify(text)  # the most private level
    assert result.label in ("negative", "positive")
    assert set(result.probabilities) == {"negative", "positive"}
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert result.probabilities[result.label] == max(result.probabilities.values())
    most_private = min(client.manifest().model.privacy_levels, key=lambda level: level.mu)
    assert result.level_id == most_private.id
    assert result.private
    assert result.epsilon_prompt > result.epsilon_token > 0
    assert result.usage.generated_tokens == 0
    assert (
        result.usage.payload_bits
        == result.usage.prompt_tokens * most_private.dim * most_private.bits
    )
    assert result.client_wire_bytes_sent == result.usage.wire_bytes_received


def test_the_committed_adapter_classifies_held_out_sentences_above_chance(
    classifier, client, shared_dir
):
    """Dev sentences through `del-client evaluate` at the least private level: a binomial test
    against a coin toss."""
    from scipy.stats import binomtest

    least_private = max(client.manifest().model.privacy_levels, key=lambda level: level.mu)
    dev_file = shared_dir / "data" / "sst2" / "dev.tsv"
    report = asyncio.run(
        evaluate_file(
            ClientConfig(classifier.target),
            dev_file,
            level=least_private.target_attack_rate,
            limit=ACCURACY_SENTENCES,
            progress=False,
        )
    )
    assert (report.answered, report.errors) == (ACCURACY_SENTENCES, {})
    assert report.level_id == least_private.id
    assert report.header == "text\tlabel"
    assert report.level_utility == least_private.utility
    assert report.epsilon_token == pytest.approx(least_private.epsilon_token)
    assert binomtest(report.correct, report.answered, 0.5, alternative="greater").pvalue < 0.01


def test_evaluate_prints_one_json_report_with_or_without_privacy_and_refuses_a_missing_level(
    classifier, client, shared_dir, capsys
):
    dev_file = str(shared_dir / "data" / "sst2" / "dev.tsv")
    cli = ["evaluate", dev_file, "--server", classifier.target, "--limit", str(RPC_SENTENCES)]
    main([*cli, "--json"])
    report = json.loads(capsys.readouterr().out)
    most_private = min(client.manifest().model.privacy_levels, key=lambda level: level.mu)
    assert (report["answered"], report["private"]) == (RPC_SENTENCES, True)
    assert report["level_id"] == most_private.id
    main([*cli, "--json", "--mechanism", "raw"])  # the server allows raw: no privacy, no ε
    raw = json.loads(capsys.readouterr().out)
    assert (raw["answered"], raw["private"], raw["epsilon_token"]) == (RPC_SENTENCES, False, None)
    with pytest.raises(SystemExit) as exited:
        main([*cli, "--level", "0.5"])
    assert exited.value.code == 2
    assert "no level calibrated to 0.5" in capsys.readouterr().err


def test_evaluate_counts_a_row_it_cannot_send_and_goes_on(classifier, client, tmp_path, capsys):
    """A row over the server's token limit is refused before sending: it is counted, left out
    of the accuracy, and the command says so and exits 1."""
    too_long = " ".join(["good"] * (client.manifest().model.max_prompt_tokens + 1))
    rows = tmp_path / "rows.tsv"
    rows.write_text(f"a gorgeous , witty , seductive movie\t1\n{too_long}\t1\nbleak\t0\n")
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", str(rows), "--server", classifier.target, "--json"])
    assert exited.value.code == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert (report["attempted"], report["answered"]) == (3, 2)
    assert report["errors"] == {"LimitExceededError": 1}
    assert sum(sum(row.values()) for row in report["confusion"].values()) == 2
    assert "1 of 3 rows were not answered" in captured.err


def test_concurrent_requests_share_forward_passes_and_each_gets_its_own_answer(classifier, dev):
    """The raw mechanism is deterministic: answers of a concurrent batch equal answers alone."""

    async def run() -> tuple[list, list]:
        async with AsyncClient(ClientConfig(classifier.target)) as c:
            texts = [text for text, _ in dev[:RPC_SENTENCES]]
            alone = [await c.classify(t, mechanism="raw") for t in texts]
            together = await asyncio.gather(*(c.classify(t, mechanism="raw") for t in texts))
            return alone, together

    alone, together = asyncio.run(run())
    for a, b in zip(alone, together, strict=True):
        assert a.label == b.label
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)


def test_the_server_classifies_the_clients_symbols_exactly_as_training_scores_them(
    client, classifier, dev
):
    """What is served is what was trained: the symbols a client sends at each level, decoded
    and run through the training path (NoisyPath, the level's head and soft prompt), give the
    probabilities the server answers. So served and trained accuracies differ by the noise
    draw alone."""
    import torch

    from del_client.codec import FrameAssembler, spec_from_params
    from del_client.request import PrivacyChoice, PromptPlan
    from del_server.adapter import Adapter
    from del_server.models import load_model
    from del_server.train.classification.objective import NoisyPath

    loaded = load_model("all-MiniLM-L6-v2")
    path = NoisyPath(loaded.model, cls_id=loaded.cls_id, sep_id=loaded.sep_id)
    adapter = Adapter.load(DEFAULT_NLU_ADAPTER)
    model, bundle = client.manifest().model, client.bundle()
    with grpc.insecure_channel(classifier.target) as channel:
        stub = inference_pb2_grpc.SplitInferenceStub(channel)
        for level in model.privacy_levels:
            for text, _ in dev[:RPC_SENTENCES]:
                plan = PromptPlan(text, PrivacyChoice(level=level.target_attack_rate), None)
                request = plan.prepare(
                    model, bundle, max_payload_bytes=4096, payload_encoding="packed"
                )
                reply = stub.Classify(iter(request.messages), timeout=30)
                header, *frames, _ = request.messages
                received = FrameAssembler(
                    spec_from_params(header.header.mechanism), max_tokens=request.prompt_tokens
                )
                for message in frames:
                    received.add(message.frame)
                x_hat = torch.from_numpy(received.embeddings())
                with torch.inference_mode():
                    logits = path.logits(
                        adapter,
                        [torch.tensor(bundle.encode(text))],
                        adapter.task.heads[level.mu],
                        noise=lambda z, generator, x_hat=x_hat: x_hat,
                        generator=None,
                        soft_prompt=adapter.soft_prompts[level.mu],
                    )
                trained = torch.softmax(logits[0].double(), dim=-1).tolist()
                served = [p.probability for p in reply.probabilities]
                assert served == pytest.approx(trained, abs=1e-6), (level.id, text)


def test_parameters_of_no_level_are_refused_before_any_privacy_is_spent(client):
    with pytest.raises(RequestOptionError, match="levels only"):
        client.classify("a gorgeous film", mu=0.123)


def test_the_server_refuses_parameters_of_no_level_with_invalid_argument(client, classifier):
    """A client that skips the check gets INVALID_ARGUMENT, and the server stays up."""
    from del_client.request import PrivacyChoice, PromptPlan

    model, bundle = client.manifest().model, client.bundle()
    plan = PromptPlan("a gorgeous film", PrivacyChoice(mu=0.123), sampling=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(model), "level_of", lambda self, spec: model.privacy_levels[0])
        request = plan.prepare(model, bundle, max_payload_bytes=4096)
    with grpc.insecure_channel(classifier.target) as channel:
        stub = inference_pb2_grpc.SplitInferenceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(iter(request.messages), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "levels only" in refused.value.details()
    assert client.classify("still serving").label


def test_generate_on_a_classifier_is_refused_before_any_privacy_is_spent(client):
    with pytest.raises(RequestOptionError, match="classifies"):
        client.generate("a gorgeous film").collect()


def test_generate_on_a_classifier_is_failed_precondition(client, classifier):
    """What a client without the manifest check gets from the server itself."""
    request = inference_pb2.GenerateRequest(header=inference_pb2.StreamHeader())
    with grpc.insecure_channel(classifier.target) as channel:
        stub = inference_pb2_grpc.SplitInferenceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Generate(iter([request]), timeout=30))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "call Classify, not Generate" in refused.value.details()


def test_classify_on_a_generator_is_failed_precondition(server):
    with Client(ClientConfig(server.target)) as c, pytest.raises(RequestOptionError):
        c.classify("Once upon a time")
    request = inference_pb2.ClassifyRequest(header=inference_pb2.StreamHeader())
    with grpc.insecure_channel(server.target) as channel:
        stub = inference_pb2_grpc.SplitInferenceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(iter([request]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "call Generate, not Classify" in refused.value.details()


def test_an_empty_prompt_is_refused(client):
    with pytest.raises((RequestOptionError, InvalidRequestError)):
        client.classify("")


def test_metrics_carry_the_task_and_the_labels_answered(client, classifier):
    client.classify("an utterly charming film", mechanism="raw")
    text = urllib.request.urlopen(classifier.metrics_url, timeout=10).read().decode()
    assert re.search(
        r'^del_server_info\{model="all-MiniLM-L6-v2",task="classify"\} 1\.0$', text, re.M
    )
    answered = re.findall(r'^del_classified_total\{label="(\w+)"\} (\S+)$', text, re.M)
    assert {label for label, _ in answered} == {"negative", "positive"}
    assert sum(float(n) for _, n in answered) >= 1


def test_a_stale_bundle_digest_is_failed_precondition(client, classifier):
    from del_client.request import PrivacyChoice, PromptPlan

    model, bundle = client.manifest().model, client.bundle()
    request = PromptPlan("a fine film", PrivacyChoice(), sampling=None).prepare(
        model, bundle, max_payload_bytes=4096
    )
    header, *rest = request.messages
    header.header.bundle_digest = "0" * 64
    with grpc.insecure_channel(classifier.target) as channel:
        stub = inference_pb2_grpc.SplitInferenceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(iter([header, *rest]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
