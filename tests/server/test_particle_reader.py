"""The particle reader: the server decodes a private prompt by the LLM's posterior and hands
the engine one decoded prompt, drawn by weight. Its draws must follow the exact posterior
(checked against enumerating every two-token prompt under the model), the engine must see
the reader's prefix, BOS and real token embeddings, and an adapter that carries a reader
must round-trip, refuse what it cannot serve, and serve over gRPC."""

from __future__ import annotations

import concurrent.futures
import json
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from del_client import Client, ClientConfig
from del_client.errors import DeadlineExceededError
from del_client.mechanism import PrivacySpec
from del_client.proto import inference_pb2
from del_server.adapter import Adapter, ParticleReading
from del_server.attacks.mechanisms import Binomial
from del_server.attacks.particle import SamplingAbandonedError
from del_server.attacks.tokenwise import log_likelihood_matrix
from del_server.backends.transformers import TransformersBackend
from del_server.generation import PrivatePrompt, PromptBuilder
from del_server.particle_reader import ParticleReader
from del_server.settings import DEFAULT_ADAPTER, Settings


@pytest.fixture(scope="module")
def loaded(stories260k):
    from del_server.models import load_model

    return load_model(str(stories260k))


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    """The committed adapter (it has a prior) with a reader whose prefix is a real trained
    soft prompt of the right shape."""
    base = Adapter.load(DEFAULT_ADAPTER)
    return replace(base, reader=ParticleReading(base.soft_prompts[max(base.soft_prompts)], 64))


def _spec(adapter: Adapter, level: int = -1) -> PrivacySpec:
    mu = adapter.calibration[level].mu
    return PrivacySpec.from_mu(mu=mu, dim=adapter.projection_dim, bits=4, clip=adapter.clip)


@torch.no_grad()
def test_the_reader_draws_two_token_prompts_from_the_exact_posterior(loaded, adapter):
    reader = ParticleReader.of(adapter, loaded.model, loaded.bos_id)
    mechanism = Binomial(_spec(adapter))
    table = reader.posterior.client_table
    ids = loaded.tokenizer.encode(" the cat", add_special_tokens=False).ids[:2]
    symbols = mechanism.privatize(table[ids], np.random.default_rng(3))
    likelihood = log_likelihood_matrix(mechanism.log_likelihood(table), symbols).double()
    # P(v1, v2 | symbols) ∝ P_LM(v1) P(s1 | v1) P_LM(v2 | v1) P(s2 | v2), every pair at once.
    vocab = likelihood.shape[-1]
    start = torch.cat([reader.prefix, loaded.embeddings[[loaded.bos_id]]])
    first = loaded.model(inputs_embeds=start[None]).logits[0, -1].double().log_softmax(-1)
    pairs = torch.cat(
        [start.expand(vocab, -1, -1), loaded.embeddings[:, None].to(start.dtype)], dim=1
    )
    second = loaded.model(inputs_embeds=pairs).logits[:, -1].double().log_softmax(-1)
    joint = first[:, None] + likelihood[0][:, None] + second + likelihood[1][None, :]
    exact = joint.logsumexp(dim=1).softmax(dim=0).numpy()  # the first token's marginal

    draws = 400
    firsts = np.array([int(reader.read(symbols, mechanism, None)[0]) for _ in range(draws)])
    expected = draws * exact
    common = expected >= 5  # chi-square bins: each common token, the rest pooled
    observed = [*np.bincount(firsts, minlength=vocab)[common], (~common[firsts]).sum()]
    pooled = [*expected[common], expected[~common].sum()]
    assert common.sum() >= 2, "a posterior this sure tests nothing: use a more private level"
    assert stats.chisquare(observed, pooled).pvalue > 1e-6, (observed, pooled)


def test_at_a_level_the_reader_ignores_the_prompt_with_its_probability(loaded, adapter):
    mu = adapter.calibration[0].mu
    reading = replace(adapter.reader, particles=4, ignore_prompt={mu: 0.3})
    reader = ParticleReader.of(replace(adapter, reader=reading), loaded.model, loaded.bos_id)
    mechanism = Binomial(_spec(adapter, 0))
    symbols = np.zeros((2, adapter.projection_dim), np.uint8)
    draws = 300
    ignored = sum(len(reader.read(symbols, mechanism, mu)) == 0 for _ in range(draws))
    assert stats.binomtest(ignored, draws, 0.3).pvalue > 1e-6, ignored
    assert all(len(reader.read(symbols, mechanism, None)) == 2 for _ in range(20))


def test_the_engine_sees_the_prefix_bos_and_the_decoded_tokens(loaded, adapter):
    reader = ParticleReader.of(adapter, loaded.model, loaded.bos_id)
    builder = PromptBuilder(
        TransformersBackend(loaded.model), adapter, loaded.bos_id, reader=reader
    )
    mu = adapter.calibration[0].mu
    symbols = np.random.default_rng(1).integers(0, 16, (5, adapter.projection_dim), np.uint8)
    inputs, level, reading = builder.build(PrivatePrompt(symbols, _spec(adapter, 0), mu=mu))
    prefix = adapter.reader.prefix
    assert (level, reading) == (mu, inference_pb2.PROMPT_READING_PARTICLE)
    assert inputs.shape == (len(prefix) + 1 + 5, adapter.hidden_size)
    torch.testing.assert_close(inputs[: len(prefix)], prefix.to(inputs.dtype))
    torch.testing.assert_close(inputs[len(prefix)], loaded.embeddings[loaded.bos_id])
    body = inputs[len(prefix) + 1 :]
    exact_rows = (body[:, None] == loaded.embeddings[None].to(body.dtype)).all(dim=-1)
    assert exact_rows.any(dim=1).all()  # real tokens, not mixtures of them


def test_an_adapter_keeps_its_reader_in_a_file_of_its_own(adapter, tmp_path):
    ignore = {level.mu: 0.25 for level in adapter.calibration}
    replace(adapter, reader=replace(adapter.reader, ignore_prompt=ignore)).save(tmp_path)
    again = Adapter.load(tmp_path)
    assert again.reader.particles == 64
    assert again.reader.ignore_prompt == ignore
    torch.testing.assert_close(again.reader.prefix, adapter.reader.prefix)
    # The levels' tensors are the committed adapter's, byte for byte: reports pin them.
    committed = (Path(DEFAULT_ADAPTER) / "adapter.safetensors").read_bytes()
    assert (tmp_path / "adapter.safetensors").read_bytes() == committed
    description = json.loads((tmp_path / "adapter.json").read_text())
    assert description["reader"]["file"] == "reader.safetensors"
    (tmp_path / "reader.safetensors").write_bytes(
        (tmp_path / "reader.safetensors").read_bytes()[:-4] + b"\0\0\0\0"
    )
    with pytest.raises(ValueError, match=r"reader\.safetensors: digest differs"):
        Adapter.load(tmp_path)


def test_a_reader_needs_a_prior_a_prefix_of_the_models_width_and_particles(adapter):
    with pytest.raises(ValueError, match="needs a prior"):
        replace(adapter, prior=None, front_ends={})
    for wrong in (
        ParticleReading(torch.zeros(4, 3), 8),
        ParticleReading(adapter.reader.prefix, 0),
        ParticleReading(adapter.reader.prefix, 8, {123.0: 0.5}),  # no such level
    ):
        with pytest.raises(ValueError, match="the particle reader needs"):
            replace(adapter, reader=wrong)
    with pytest.raises(ValueError, match="probabilities"):
        ParticleReading(adapter.reader.prefix, 8, {adapter.calibration[0].mu: 1.5})


def test_a_server_with_a_reader_generates_at_every_level_and_says_how_it_read(
    loaded, adapter, serve, stories260k, tmp_path
):
    # The most private level's prompts are always ignored (λ = 1), the others always read.
    ignored = replace(adapter.reader, ignore_prompt={adapter.calibration[0].mu: 1.0})
    out = replace(adapter, reader=ignored).save(tmp_path / "adapter")
    settings = Settings(model=str(stories260k), adapter=str(out), port=0, metrics_port=-1)
    with serve(settings) as loopback:
        config = ClientConfig(target=loopback.target, bundle_cache_dir=tmp_path)
        with Client(config) as client:
            model = client.manifest().model
            levels = model.privacy_levels
            results = [
                client.generate(
                    "Once upon a time", level=level.target_attack_rate, max_new_tokens=4
                ).collect()
                for level in levels
            ]
    for level, result in zip(levels, results, strict=True):
        assert len(result.token_ids) == 4
        assert result.level_id == level.id
        # The reader's prefix, never the level's soft prompt, came before the prompt.
        assert (result.soft_prompt, result.soft_prompt_mu) == ("reader", None)
    assert [r.reading for r in results] == ["ignored"] + ["particle"] * (len(levels) - 1)
    # The manifest said so before anything was sent.
    assert (model.prompt_reading, model.reader_particles) == ("particle", adapter.reader.particles)
    assert [level.ignore_probability for level in levels] == [1.0] + [0.0] * (len(levels) - 1)


def test_a_burst_of_private_prompts_is_read_at_most_max_reading_at_a_time(
    adapter, serve, stories260k, tmp_path, monkeypatch
):
    """Each read holds its particles' cache (about 2 GB for a 512-token prompt at 1,024
    particles), so the server reads `max_reading` prompts at once and queues the rest."""
    running = most = 0
    count = threading.Lock()
    read = ParticleReader.read

    def counted(self, *args):
        nonlocal running, most
        with count:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)  # long enough for the burst's reads to overlap, were they let
            return read(self, *args)
        finally:
            with count:
                running -= 1

    monkeypatch.setattr(ParticleReader, "read", counted)
    out = adapter.save(tmp_path / "adapter")
    settings = Settings(
        model=str(stories260k), adapter=str(out), port=0, metrics_port=-1, max_reading=2
    )
    with serve(settings) as loopback:
        config = ClientConfig(target=loopback.target, bundle_cache_dir=tmp_path)
        with Client(config) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
            client.manifest()
            results = list(
                pool.map(
                    lambda _: client.generate("Once upon a time", max_new_tokens=2).collect(),
                    range(8),
                )
            )
    assert [r.reading for r in results] == ["particle"] * 8
    assert most == 2


@pytest.mark.parametrize(
    ("client_deadline_s", "max_request_s"),
    [(1.0, 300.0), (120.0, 1.0)],
    ids=["the client gives up", "the server's limit per request"],
)
def test_a_read_whose_stream_is_gone_or_out_of_time_stops_at_its_next_position(
    adapter, serve, stories260k, tmp_path, monkeypatch, client_deadline_s, max_request_s
):
    """A long private prompt read over 1,024 particles takes tens of seconds of a core; when
    its client gives up, or the stream runs past the server's limit, the read stops instead of
    holding a builder thread to its end."""
    ended: queue.Queue = queue.Queue()
    read = ParticleReader.read

    def watched(self, *args):
        try:
            ids = read(self, *args)
        except SamplingAbandonedError as abandoned:
            ended.put(str(abandoned))
            raise
        ended.put("read to the end")
        return ids

    monkeypatch.setattr(ParticleReader, "read", watched)
    out = replace(adapter, reader=replace(adapter.reader, particles=1024)).save(tmp_path / "a")
    settings = Settings(
        model=str(stories260k),
        adapter=str(out),
        port=0,
        metrics_port=-1,
        max_request_s=max_request_s,
    )
    text = " ".join(["Tom and Lily went to the park to play with their big red ball."] * 20)
    with serve(settings) as loopback:
        while not ended.empty():  # the server's warm-up read
            ended.get()
        config = ClientConfig(
            target=loopback.target, bundle_cache_dir=tmp_path, deadline_s=client_deadline_s
        )
        with Client(config) as client, pytest.raises(DeadlineExceededError):
            client.generate(text, max_new_tokens=2).collect()
        outcome = ended.get(timeout=30)
    assert outcome.startswith("abandoned at position"), outcome
