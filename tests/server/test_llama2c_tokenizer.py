"""The HF tokenizer built from tok512.bin must give llama2.c's ids exactly.

The oracle below is a direct transcription of ``encode()`` in llama2.c's run.c. It is
O(n^2) per text, so the corpus checks use a bounded sample: the first 600 paragraphs
(about 127k characters) of the TinyStories dev head and the first 40 wikitext-2 validation
lines that contain non-ASCII characters (byte fallback and multi-byte pieces).
"""

import json
import struct
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from del_server.models.llama2c_tokenizer import load_llama2c_tokenizer

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TOK512 = SHARED / "models" / "stories260K" / "tok512.bin"


class Llama2cOracle:
    """run.c's encode(), without BOS/EOS, over the pieces and scores read from the file."""

    def __init__(self, path: Path) -> None:
        data, offset = path.read_bytes(), 4
        self.pieces: list[str] = []
        self.scores: list[float] = []
        while offset < len(data):
            score, length = struct.unpack_from("<fi", data, offset)
            self.pieces.append(data[offset + 8 : offset + 8 + length].decode())
            self.scores.append(score)
            offset += 8 + length
        self.index = {piece: i for i, piece in enumerate(self.pieces)}

    def encode(self, text: str) -> list[int]:
        ids = [self.index[" "]] if text else []  # the dummy prefix
        for char in text:
            ids += [self.index[char]] if char in self.index else [b + 3 for b in char.encode()]
        while True:
            merged = [self.index.get(self.pieces[a] + self.pieces[b]) for a, b in pairwise(ids)]
            candidates = [i for i, m in enumerate(merged) if m is not None]
            if not candidates:
                return ids
            best = max(candidates, key=lambda i: self.scores[merged[i]])  # first max: leftmost
            ids[best : best + 2] = [merged[best]]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_llama2c_tokenizer(TOK512)


@pytest.fixture(scope="module")
def oracle() -> Llama2cOracle:
    return Llama2cOracle(TOK512)


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((TOK512.parent / "reference_greedy.json").read_text(encoding="utf-8"))


def test_keeps_the_vocab_size_of_the_file(tokenizer):
    assert tokenizer.get_vocab_size() == 512


def test_encodes_reference_prompt_to_golden_ids(tokenizer, reference):
    ids = tokenizer.encode(reference["prompt"]).ids
    assert ids == [403, 407, 261, 378]
    assert [reference["bos_id"], *ids] == reference["prompt_ids"]


def test_decodes_golden_greedy_ids_to_golden_text(tokenizer, reference):
    assert tokenizer.decode(reference["greedy_ids_60"]) == reference["greedy_text"]


def test_survives_a_json_round_trip(tokenizer, reference):
    reloaded = Tokenizer.from_str(tokenizer.to_str())
    assert (
        reloaded.encode(reference["greedy_text"]).ids
        == tokenizer.encode(reference["greedy_text"]).ids
    )


def test_score_ties_in_tok512_cannot_make_rank_order_differ(oracle):
    """The sufficient conditions (a) and (b) of the module docstring, checked on this file."""
    index, score = oracle.index, dict(zip(oracle.pieces, oracle.scores, strict=True))
    splits = {
        piece: [
            (piece[:k], piece[k:])
            for k in range(1, len(piece))
            if piece[:k] in index and piece[k:] in index
        ]
        for piece in oracle.pieces
    }
    mergeable = [piece for piece, pairs in splits.items() if pairs]
    assert len({score[piece] for piece in mergeable}) == len(mergeable)  # (a)

    for tie in (piece for piece in mergeable if len(splits[piece]) > 1):  # (b)
        assert all(tie[:k] != tie[-k:] for k in range(1, len(tie))), tie
        cascade, left, right, grown = set(), set(), set(), [tie]
        while grown:
            part = grown.pop()
            for bigger in (piece for piece in mergeable if score[piece] > score[tie]):
                for a, b in (pair for pair in splits[bigger] if part in pair):
                    if b == part:
                        left.add(a)
                    if a == part:
                        right.add(b)
                    if bigger not in cascade:
                        cascade.add(bigger)
                        grown.append(bigger)
        halves = {half for pair in splits[tie] for half in pair}
        assert not left & right, tie
        assert not (left | right) & ({tie} | halves | cascade), tie


def _mismatches(tokenizer: Tokenizer, oracle: Llama2cOracle, texts: list[str]) -> list[str]:
    return [text for text in texts if tokenizer.encode(text).ids != oracle.encode(text)]


def test_matches_llama2c_on_tinystories_paragraphs(tokenizer, oracle):
    lines = (SHARED / "data" / "tinystories" / "tinystories_val_head_dev.txt").read_text(
        encoding="utf-8"
    )
    paragraphs = [line for line in lines.splitlines() if line][:600]
    assert _mismatches(tokenizer, oracle, paragraphs) == []


def test_matches_llama2c_on_non_ascii_wikitext_lines(tokenizer, oracle):
    lines = (SHARED / "data" / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    non_ascii = [line for line in lines.splitlines() if not line.isascii()][:40]
    assert len(non_ascii) == 40
    assert _mismatches(tokenizer, oracle, non_ascii) == []


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_matches_llama2c_and_round_trips_on_arbitrary_text(tokenizer, oracle, data):
    # Arbitrary text (st.text() leaves out lone surrogates, which are not UTF-8), plus runs
    # of vocab pieces so that competing merges (the two splits of " the") meet and the
    # literal text of BOS, EOS and byte pieces shows up. No exception is needed: "",
    # whitespace-only text and "\x00" round-trip, since decode strips exactly the one
    # space that encode prepended.
    pieces = st.sampled_from(oracle.pieces)
    text = data.draw(st.text() | st.lists(pieces | st.characters()).map("".join))
    ids = tokenizer.encode(text).ids
    assert ids == oracle.encode(text)
    assert tokenizer.decode(ids) == text
