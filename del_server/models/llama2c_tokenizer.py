"""Load a llama2.c ``tokenizer.bin`` as a Hugging Face ``tokenizers.Tokenizer``.

The client has to tokenize exactly as llama2.c did when the model was trained, and without
torch. llama2.c stores its SentencePiece-style vocabulary as a flat binary (int32
max_token_len, then per piece: float32 score, int32 byte length, UTF-8 bytes) and encodes with
its own loop in ``run.c``: prepend a dummy-prefix space, map each code point to its piece or
else to byte-fallback ids (byte + 3), then repeatedly merge the adjacent pair whose
concatenation is the highest-scoring piece, the leftmost pair on ties. Here that loop becomes a
byte-fallback BPE without pre-tokenization (llama2.c merges across spaces) whose merges are
every split of every piece into two pieces, ranked by the merged piece's score.

Exactness: HF BPE also merges best-first and leftmost-first, but "best" is the lowest rank,
and ranks are unique per pair, while scores can be shared by different pairs: by two pieces of
equal score, or by two splits of one piece (" t"+"he" and " th"+"e" both make " the"). Where
llama2.c takes the leftmost of such equal-score pairs, HF takes the lower-ranked one, so the
ids can differ if (a) two distinct pieces that are concatenations of two pieces share a score
(with "ab" before "aa", both scoring -4, "aab" gives " ", "a", "ab" here but " ", "aa", "b" in
run.c), or (b) the merge order of the waiting pairs of a piece P with several splits matters.
It cannot matter when P has no border (no proper prefix equals a suffix, so two P pairs never
overlap) and P's cascade stays local: a new P may at once take neighbours into higher-scoring
pieces (" " + "her" makes " her"), but the neighbours taken on the left and on the right must be
disjoint sets that hold neither P, nor a half of a split of P, nor a piece of the cascade.
SentencePiece exports give normal pieces distinct scores (byte and control pieces all score 0
but are never a concatenation of pieces), and stories260K's ``tok512.bin`` also meets (b),
which its tests check, so there the ids are identical for every input. Two more differences
from ``run.c``: "\\x00" is encoded as <0x00> where C would stop reading the string, and pieces
scoring below -1e10 are merged here only.

Decoding undoes byte fallback, drops BOS and EOS (llama2.c never prints them) and strips one
leading space, the dummy prefix, from the whole output, as HF's Llama tokenizers do.
"""

import os
import struct
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers

BOS_ID, EOS_ID = 1, 2  # hard-coded in run.c, as is <unk> at id 0


def load_llama2c_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Build a tokenizer whose ``encode(text).ids`` equal run.c's ``encode`` without BOS/EOS."""
    pieces, scores = _read_pieces(Path(path))
    vocab = {piece: i for i, piece in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise ValueError(f"{path}: duplicate pieces; a BPE vocabulary needs unique strings")
    # Best score first; equal scores keep id then split order, which no tie can depend on
    # where the conditions in the module docstring hold.
    splits = sorted(
        (-scores[i], i, k, piece[:k], piece[k:])
        for i, piece in enumerate(pieces)
        for k in range(1, len(piece))
        if piece[:k] in vocab and piece[k:] in vocab
    )
    merges = [(left, right) for *_, left, right in splits]

    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=pieces[0], byte_fallback=True)
    )
    tokenizer.normalizer = normalizers.Prepend(" ")  # the dummy prefix, only for non-empty text
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(pieces[BOS_ID], ""),
            decoders.Replace(pieces[EOS_ID], ""),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return tokenizer


def _read_pieces(path: Path) -> tuple[list[str], list[float]]:
    """Read every (piece, score) record; the file holds exactly vocab_size of them."""
    data = path.read_bytes()
    offset = 4  # max_token_len only sizes run.c's buffers
    pieces, scores = [], []
    while offset < len(data):
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        if offset + length > len(data):
            raise ValueError(f"{path}: truncated piece record at byte {offset}")
        pieces.append(data[offset : offset + length].decode("utf-8"))
        scores.append(score)
        offset += length
    return pieces, scores
