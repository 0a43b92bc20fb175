"""Sampling and text streaming: greedy, top-k/top-p truncation, stop sequences, UTF-8."""

from __future__ import annotations

import math

import pytest
import torch

from del_client.errors import RequestOptionError
from del_client.sampling import Sampling
from del_server.models.llama2c_tokenizer import load_llama2c_tokenizer
from del_server.sampling import Sampler, TextStream


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
