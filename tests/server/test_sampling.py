"""Sampling and text streaming: greedy, top-k/top-p truncation, stop sequences, UTF-8."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from del_client.errors import RequestOptionError
from del_client.sampling import Sampling
from del_server.models.llama2c_tokenizer import load_llama2c_tokenizer
from del_server.sampling import Sampler, TextStream, sample


@pytest.fixture(scope="module")
def tokenizer(shared_dir):
    return load_llama2c_tokenizer(shared_dir / "models" / "stories260K" / "tok512.bin")


@pytest.mark.parametrize("temperature", [0.0, 1e-45, 9e-6])
def test_temperature_zero_and_below_1e_5_is_argmax(temperature):
    """1e-45 would overflow the scaled logits to inf: its limit, the argmax, is taken instead."""
    logits = torch.tensor([0.1, 3.0, 2.9])
    sampler = Sampler(Sampling(max_new_tokens=1, temperature=temperature, seed=0))
    assert {sampler(logits) for _ in range(50)} == {1}


def test_top_k_and_top_p_never_pick_outside_the_kept_set():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    top_k = Sampler(Sampling(max_new_tokens=1, top_k=2, seed=0))
    assert {top_k(logits) for _ in range(300)} == {0, 1}
    top_p = Sampler(Sampling(max_new_tokens=1, top_p=0.75, seed=0))
    assert {top_p(logits) for _ in range(300)} == {0, 1}


def test_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    sampler = Sampler(Sampling(max_new_tokens=1, seed=3))
    draws = torch.tensor([sampler(torch.log(probs)) for _ in range(4000)])
    frequencies = torch.bincount(draws, minlength=4) / 4000
    torch.testing.assert_close(frequencies, probs, atol=0.03, rtol=0)


def test_a_batch_draws_for_each_row_what_it_would_draw_alone():
    """One batched draw per round for rows with different options (greedy among them) gives
    every seeded row the tokens it gets by itself, round after round."""
    options = [
        {"temperature": 0.0},
        {"temperature": 0.8, "seed": 1},
        {"temperature": 1.0, "top_k": 5, "seed": 2},
        {"temperature": 1.2, "top_p": 0.7, "seed": 3},
        {"temperature": 0.9, "top_k": 40, "top_p": 0.9, "seed": 4},
        {"temperature": 1.0, "seed": 1},  # the same seed as row 1, other logits
    ]
    params = [Sampling(max_new_tokens=1, **o) for o in options]
    batched = [Sampler(p) for p in params]
    alone = [Sampler(p) for p in params]
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        logits = torch.randn((len(params), 64), generator=generator) * 3
        together = sample(batched, logits)
        assert together == [s(row) for s, row in zip(alone, logits, strict=True)]
    assert [s.draws for s in batched] == [0, 30, 30, 30, 30, 30]


def test_a_row_with_logits_that_are_not_finite_is_refused():
    sampler = Sampler(Sampling(max_new_tokens=1, seed=0))
    with pytest.raises(ValueError, match="not finite"):
        sampler(torch.tensor([0.0, math.nan, 1.0]))


@pytest.mark.parametrize(
    "bad",
    [
        {"max_new_tokens": 0},
        {"temperature": -1.0},
        {"temperature": math.nan},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"stop": ("",)},
    ],
)
def test_invalid_sampling_parameters_are_refused(bad):
    with pytest.raises(RequestOptionError, match=next(iter(bad))):
        Sampling(**{"max_new_tokens": 4, **bad})


def anchor(tokenizer) -> int:
    return tokenizer.encode("a", add_special_tokens=False).ids[-1]


def test_text_deltas_keep_the_first_tokens_leading_space(tokenizer):
    ids = tokenizer.encode("Once upon a time there", add_special_tokens=False).ids
    stream = TextStream(tokenizer, (), anchor(tokenizer))
    text = "".join(stream.push(i) for i in ids[4:]) + stream.flush()
    assert text == " there"


def test_incomplete_utf8_is_held_back_until_complete(tokenizer):
    ids = tokenizer.encode("café ☃", add_special_tokens=False).ids
    stream = TextStream(tokenizer, (), anchor(tokenizer))
    deltas = [stream.push(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == " café ☃"


def test_stop_sequence_truncates_and_sets_stopped(tokenizer):
    ids = tokenizer.encode("She said hello and left", add_special_tokens=False).ids
    stream = TextStream(tokenizer, ("hello",), anchor(tokenizer))
    text = ""
    for i in ids:
        text += stream.push(i)
        if stream.stopped:
            break
    assert stream.stopped
    assert text + stream.flush() == " She said "


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.lists(st.text(min_size=1, max_size=8), max_size=2))
@example(text="0ý0", stops=["ý", "0ý0"])  # the shorter stop completes first: it stops there
def test_deltas_add_up_to_the_text_up_to_the_first_stop(tokenizer, text, stops):
    """Incremental decoding loses and adds nothing: for any text the model could generate
    (byte fallback included), the deltas concatenate to its decoded text, cut before the
    earliest stop sequence once one has been generated. The oracle decodes every prefix
    whole: generation stops at the first token after which a stop occurs in the text (a
    longer stop that would start earlier but is not complete yet does not count)."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    anchor_id = anchor(tokenizer)
    prefix = len(tokenizer.decode([anchor_id]))
    stream = TextStream(tokenizer, tuple(stops), anchor_id)
    deltas = []
    for token_id in ids:
        deltas.append(stream.push(token_id))
        if stream.stopped:
            break
    deltas.append(stream.flush())
    expected, stopped = tokenizer.decode([anchor_id, *ids])[prefix:], False
    for end in range(1, len(ids) + 1):
        so_far = tokenizer.decode([anchor_id, *ids[:end]])[prefix:]
        cuts = [at for at in (so_far.find(stop) for stop in stops) if at != -1]
        if cuts:
            expected, stopped = so_far[: min(cuts)], True
            break
    assert "".join(deltas) == expected
    assert stream.stopped == stopped
