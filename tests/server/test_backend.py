"""Continuous batching: sequences of different lengths share one padded KV cache, join and
leave between rounds, and every row decodes exactly as it would alone."""

from __future__ import annotations

import copy
import gc
import json
import weakref

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from del_server.backends.llama import LlamaPath
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


class GreedyRows:
    """Greedy decoding of several prompts in one batch, round by round, as the engine runs it."""

    def __init__(self, batch) -> None:
        self.batch = batch
        self.ids: list[list[int]] = []
        self.logits: list[list[torch.Tensor]] = []

    def join(self, backend, inputs: torch.Tensor) -> None:
        logits, state = backend.prefill(inputs)
        self.batch.add(state)
        self.ids.append([int(logits.argmax())])
        self.logits.append([logits])

    def step(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            for row, logits in enumerate(self.batch.decode([ids[-1] for ids in self.ids])):
                self.ids[row].append(int(logits.argmax()))
                self.logits[row].append(logits)

    def keep(self, rows: list[int]) -> None:
        self.batch.keep(rows)
        self.ids = [list(self.ids[row]) for row in rows]  # a row kept twice: two copies
        self.logits = [list(self.logits[row]) for row in rows]


def greedy_alone(backend, inputs: torch.Tensor, steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy ids and the logits of every step for one sequence, decoded by itself with
    transformers' own forward pass and cache (never the Llama path)."""
    reference = TransformersBackend(backend.model, fast=False)
    alone = GreedyRows(SequentialBatch(reference.model))
    alone.join(reference, inputs)
    alone.step(steps - 1)
    return alone.ids[0], torch.stack(alone.logits[0])


def test_the_default_model_decodes_in_one_padded_batch_on_the_llama_path(backend):
    assert backend.pads_batches
    assert isinstance(backend.new_batch(), PaddedBatch)
    assert backend.fast is not None


@pytest.mark.parametrize("fast", [True, False], ids=["llama path", "transformers forward"])
def test_rows_of_different_lengths_decode_as_they_would_alone(stories, fast):
    backend = TransformersBackend(stories.model, fast=fast)
    steps = 24
    inputs = [prompt(stories, backend, text) for text in TEXTS]
    assert len({x.shape[0] for x in inputs}) == len(TEXTS)  # the padding is really exercised
    rows = GreedyRows(backend.new_batch())
    for x in inputs:
        rows.join(backend, x)
    rows.step(steps - 1)
    for row, x in enumerate(inputs):
        alone_ids, alone_logits = greedy_alone(backend, x, steps)
        assert rows.ids[row] == alone_ids
        torch.testing.assert_close(torch.stack(rows.logits[row]), alone_logits, atol=1e-4, rtol=0)


def test_rows_leave_and_join_between_rounds(stories, backend):
    """Drop the longest row mid-way (its padding goes with it) and let a new one join."""
    first, long, late = (prompt(stories, backend, TEXTS[i]) for i in (0, 1, 3))
    rows = GreedyRows(backend.new_batch())
    rows.join(backend, first)
    rows.join(backend, long)
    rows.step(5)
    rows.keep([0])
    rows.join(backend, late)
    rows.step(10)
    assert rows.batch.size == 2
    assert rows.ids[0] == greedy_alone(backend, first, 16)[0]
    assert rows.ids[1] == greedy_alone(backend, late, 11)[0]
    rows.keep([])
    assert rows.batch.size == 0


def test_a_row_kept_several_times_continues_as_copies_past_the_batchs_capacity(stories, backend):
    """What the particle sampler does: rows copied (the batch grows), each copy decoding as
    its original would alone; rows of one length hand out their keys and values."""
    first, second = (prompt(stories, backend, TEXTS[i]) for i in (0, 1))
    rows = GreedyRows(backend.new_batch())
    rows.join(backend, first)
    rows.join(backend, second)
    rows.step(3)
    copies = [1, 0, 1, 1, 0, 1]  # more rows than PaddedBatch.MIN_ROWS
    rows.keep(copies)
    rows.step(6)
    assert rows.batch.size == len(copies)
    for row, original in enumerate(copies):
        assert rows.ids[row] == greedy_alone(backend, (first, second)[original], 10)[0]
    with pytest.raises(ValueError, match="different lengths"):
        rows.batch.states()
    rows.keep([0, 2])  # both copies of the second prompt: one length
    keys, values = rows.batch.states()[0]
    assert keys.shape[0] == values.shape[0] == 2
    torch.testing.assert_close(keys[0], keys[1])


def test_the_golden_greedy_continuation_survives_batching(stories, backend, stories260k):
    """reference_greedy.json, computed outside transformers, decoded beside another prompt."""
    reference = json.loads((stories260k / "reference_greedy.json").read_text())
    rows = GreedyRows(backend.new_batch())
    rows.join(backend, prompt(stories, backend, TEXTS[1]))
    rows.join(backend, backend.embed(reference["prompt_ids"]))
    rows.step(len(reference["greedy_ids_60"]) - len(reference["prompt_ids"]) - 1)
    assert reference["prompt_ids"] + rows.ids[1] == reference["greedy_ids_60"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_the_llama_path_in_half_precision_gives_transformers_greedy_ids(stories, dtype):
    """In bfloat16 and float16 the Llama path rounds as transformers' eager attention does
    (scale on the scores, not on the queries): stories260K's greedy continuations agree."""
    model = copy.deepcopy(stories.model).to(dtype)
    backend = TransformersBackend(model)
    assert backend.fast is not None
    for text in TEXTS:
        inputs = prompt(stories, backend, text)
        rows = GreedyRows(backend.new_batch())
        rows.join(backend, inputs)
        rows.step(47)
        assert rows.ids[0] == greedy_alone(backend, inputs, 48)[0], text


def test_the_default_model_pads_exactly_with_sdpa_attention_too(stories, backend):
    """sdpa builds its own mask from the padding mask: still equal to decoding alone."""
    sdpa = TransformersBackend(copy.deepcopy(stories.model))
    sdpa.model.set_attn_implementation("sdpa")
    assert sdpa.pads_batches
    inputs = [prompt(stories, sdpa, text) for text in TEXTS]
    rows = GreedyRows(sdpa.new_batch())
    for x in inputs:
        rows.join(sdpa, x)
    rows.step(11)
    for row, x in enumerate(inputs):
        alone_ids, alone_logits = greedy_alone(backend, x, 12)
        assert rows.ids[row] == alone_ids
        torch.testing.assert_close(torch.stack(rows.logits[row]), alone_logits, atol=1e-4, rtol=0)


TINY = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(
            lambda: MistralForCausalLM(MistralConfig(**TINY, sliding_window=4)), id="sliding window"
        ),
        pytest.param(
            lambda: LlamaForCausalLM(
                LlamaConfig(
                    **TINY,
                    rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
                )
            ),
            id="dynamic RoPE",
        ),
    ],
)
def test_models_a_padded_cache_would_change_decode_row_by_row(model):
    """Sliding-window layers keep a different length per layer; dynamic RoPE rescales every
    row by the longest one's position. Padding them into one cache would change the output."""
    backend = TransformersBackend(model())
    assert not backend.pads_batches
    assert isinstance(backend.new_batch(), SequentialBatch)


class JoinedTogether(GreedyRows):
    """Several prompts prefilled in one left-padded forward pass, then decoded with the rest."""

    def join_many(self, backend, inputs: list[torch.Tensor]) -> None:
        logits, state = backend.prefill_many(inputs)
        self.batch.add(state)
        for row in logits:
            self.ids.append([int(row.argmax())])
            self.logits.append([row])


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_prompts_of_different_lengths_prefilled_in_one_pass_decode_as_alone(stories, attention):
    model = copy.deepcopy(stories.model)
    model.set_attn_implementation(attention)
    backend = TransformersBackend(model)
    inputs = [prompt(stories, backend, text) for text in TEXTS]
    rows = JoinedTogether(backend.new_batch())
    rows.join_many(backend, inputs)
    rows.step(15)
    for row, x in enumerate(inputs):
        alone_ids, alone_logits = greedy_alone(backend, x, 16)
        assert rows.ids[row] == alone_ids
        torch.testing.assert_close(torch.stack(rows.logits[row]), alone_logits, atol=1e-4, rtol=0)


def test_the_cache_grows_in_rows_and_columns_and_rows_leave_from_anywhere(stories, backend):
    """More rows than the first buffers hold, a prompt longer than every column in use (the
    cache moves right), more rounds than the first buffers' columns, and rows leaving from
    the front, middle and back (the last rows fill their places): all as alone."""
    texts = [*TEXTS, "Lily", "Once upon a time there was a big dog"]
    inputs = [prompt(stories, backend, t) for t in texts]
    longest = backend.embed([stories.bos_id] + [403, 407, 261, 378] * 20)  # 81 tokens
    rows = JoinedTogether(backend.new_batch())
    assert rows.batch.size == 0
    rows.join(backend, inputs[2])  # "The cat sat": the shortest first
    rows.join_many(backend, inputs[:2] + inputs[3:])
    assert rows.batch.size == len(texts) > PaddedBatch.MIN_ROWS
    rows.step(3)
    rows.join(backend, longest)
    columns = rows.batch._mask.shape[1]
    rows.step(100)
    assert rows.batch._mask.shape[1] > columns  # the decoding outgrew the buffers
    joined = [2, 0, 1, 3, 4, 5, "longest"]  # the rows' prompts, in the order they joined
    kept = [6, 1, 3, 4, 5]  # the first, third and the one before last leave
    rows.keep(kept)
    order = [joined[i] for i in kept]
    rows.step(4)
    steps = 1 + 3 + 100 + 4
    for row, which in enumerate(order):
        if which == "longest":
            alone = greedy_alone(backend, longest, 1 + 100 + 4)[0]
        else:
            alone = greedy_alone(backend, inputs[which], steps)[0]
        assert rows.ids[row] == alone
    assert rows.batch.allocated_bytes >= rows.batch.used_bytes > 0


def test_a_padded_batch_is_freed_with_its_last_reference(stories, backend):
    """No reference cycle holds its buffers until the cyclic collector runs: the particle
    sampler opens a batch per run, and a calibration's runs once piled up 24 GB."""
    rows = GreedyRows(backend.new_batch())
    rows.join(backend, prompt(stories, backend, TEXTS[0]))
    rows.step(2)
    freed = weakref.ref(rows.batch)
    gc.disable()
    try:
        del rows
        assert freed() is None
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="grouped-query attention"),
        pytest.param({"attention_bias": True, "mlp_bias": True}, id="biases"),
        pytest.param(
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}},
            id="linear RoPE",
        ),
    ],
)
def test_the_llama_path_computes_what_transformers_computes(options):
    """A random Llama (other shapes, biases, scaled RoPE): prompts prefilled together and
    decoded on the Llama path give transformers' logits for each prompt decoded alone."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY, **options)).eval()
    for parameter in model.parameters():  # random biases, not zeros
        torch.nn.init.normal_(parameter, std=0.3)
    backend = TransformersBackend(model)
    assert LlamaPath.supports(model)
    assert backend.fast is not None
    inputs = [backend.embed(list(range(1, n))) for n in (3, 9, 6)]
    rows = JoinedTogether(backend.new_batch())
    rows.join_many(backend, inputs)
    rows.step(7)
    for row, x in enumerate(inputs):
        _, alone_logits = greedy_alone(backend, x, 8)
        torch.testing.assert_close(torch.stack(rows.logits[row]), alone_logits, atol=1e-4, rtol=0)
