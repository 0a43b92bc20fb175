"""Continuous batching: sequences of different lengths share one padded KV cache, join and
leave between rounds, and every row decodes exactly as it would alone."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from del_server.backends.transformers import PaddedBatch, SequentialBatch, TransformersBackend
from del_server.models import load_model

TEXTS = [
    "Once upon a time",
    "Tom and Lily went to the park to play with a big red ball and a small dog",
    "The cat sat",
    "One day, a little bird flew over the tall green trees",
]


@pytest.fixture(scope="module")
def stories(stories260k):
    return load_model(str(stories260k))


@pytest.fixture(scope="module")
def backend(stories) -> TransformersBackend:
    return TransformersBackend(stories.model)


def prompt(stories, backend, text: str) -> torch.Tensor:
    ids = [stories.bos_id, *stories.tokenizer.encode(text, add_special_tokens=False).ids]
    return backend.embed(ids)


def greedy_alone(backend, inputs: torch.Tensor, steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy ids and the logits of every step for one sequence, decoded by itself."""
    logits, state = backend.prefill(inputs)
    alone = SequentialBatch(backend.model)
    alone.add(state)
    ids, history = [int(logits.argmax())], [logits]
    for _ in range(steps - 1):
        logits = alone.decode([ids[-1]])[0]
        ids.append(int(logits.argmax()))
        history.append(logits)
    return ids, torch.stack(history)


def test_the_default_model_decodes_in_one_padded_batch(backend):
    assert backend.pads_batches
    assert isinstance(backend.new_batch(), PaddedBatch)


def test_rows_of_different_lengths_decode_as_they_would_alone(stories, backend):
    steps = 24
    inputs = [prompt(stories, backend, text) for text in TEXTS]
    assert len({x.shape[0] for x in inputs}) == len(TEXTS)  # the padding is really exercised
    batch, ids, history = backend.new_batch(), [], []
    for x in inputs:
        logits, state = backend.prefill(x)
        batch.add(state)
        ids.append([int(logits.argmax())])
        history.append([logits])
    for _ in range(steps - 1):
        logits = batch.decode([row[-1] for row in ids])
        assert logits.shape == (len(TEXTS), stories.model.config.vocab_size)
        for row, row_logits in enumerate(logits):
            ids[row].append(int(row_logits.argmax()))
            history[row].append(row_logits)
    for row, x in enumerate(inputs):
        alone_ids, alone_logits = greedy_alone(backend, x, steps)
        assert ids[row] == alone_ids
        torch.testing.assert_close(torch.stack(history[row]), alone_logits, atol=1e-4, rtol=0)


def test_rows_leave_and_join_between_rounds(stories, backend):
    """Drop the longest row mid-way (its padding goes with it) and let a new one join."""
    first, long, late = (prompt(stories, backend, TEXTS[i]) for i in (0, 1, 3))
    batch = backend.new_batch()
    streams: list[list[int]] = []
    for x in (first, long):
        logits, state = backend.prefill(x)
        batch.add(state)
        streams.append([int(logits.argmax())])
    for _ in range(5):
        for row, logits in enumerate(batch.decode([s[-1] for s in streams])):
            streams[row].append(int(logits.argmax()))
    batch.keep([0])
    del streams[1]
    logits, state = backend.prefill(late)
    batch.add(state)
    streams.append([int(logits.argmax())])
    for _ in range(10):
        for row, logits in enumerate(batch.decode([s[-1] for s in streams])):
            streams[row].append(int(logits.argmax()))
    assert batch.size == 2
    assert streams[0] == greedy_alone(backend, first, 16)[0]
    assert streams[1] == greedy_alone(backend, late, 11)[0]
    batch.keep([])
    assert batch.size == 0


def test_the_golden_greedy_continuation_survives_batching(stories, backend, stories260k):
    """reference_greedy.json, computed outside transformers, decoded beside another prompt."""
    reference = json.loads((stories260k / "reference_greedy.json").read_text())
    batch, streams = backend.new_batch(), []
    for x in (prompt(stories, backend, TEXTS[1]), backend.embed(reference["prompt_ids"])):
        logits, state = backend.prefill(x)
        batch.add(state)
        streams.append([int(logits.argmax())])
    generated = len(reference["greedy_ids_60"]) - len(reference["prompt_ids"])
    for _ in range(generated - 1):
        for row, logits in enumerate(batch.decode([s[-1] for s in streams])):
            streams[row].append(int(logits.argmax()))
    assert reference["prompt_ids"] + streams[1] == reference["greedy_ids_60"]


def test_sliding_window_models_decode_row_by_row():
    """Their cache layers differ in length, so padding them into one cache would be wrong."""
    config = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=4,
    )
    backend = TransformersBackend(MistralForCausalLM(config))
    assert not backend.pads_batches
    assert isinstance(backend.new_batch(), SequentialBatch)
