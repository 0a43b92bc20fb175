"""The client bundle: what a client needs to turn text into projected embeddings.

It holds the tokenizer, the projected embedding table Z = (E − mean(E))·W_pᵀ (vocab × k,
float32) and the clip bound c that belongs with the projection. The client never holds LLM
weights; for a 7B model Z is 32x smaller than the embedding table.

A raw bundle (the no-privacy baseline, `mechanism="raw"`) holds the unprojected table E
(vocab × hidden size) and no clip: nothing is clipped, projected or privatized there. Its
metadata says `"mechanism": "raw"` and `hidden_size` in place of `clip` and `projection_dim`;
a projected bundle's metadata is what it always was (no `mechanism` key), so its bytes, and
its digest, are unchanged.

A prompt is encoded as it is written: a tokenizer.json may pad every input to a fixed length
or cut long ones (sentence encoders do, e.g. to 128 tokens), so the server exports and the
client encodes with `plain_tokenizer`, and a bundle published before that is still safe.

On disk and on the wire it is one safetensors file: the tensor `table` plus a single metadata
entry holding canonical JSON (sorted keys; one entry, so the header bytes are deterministic).
Its digest is the SHA-256 of those bytes: the server advertises it in its manifest, and a
client verifies it before use, so a client never encodes with a table the server did not
publish. safetensors needs no torch and never unpickles. docs/PROTOCOL.md §2 describes the
format for clients in other languages.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors
from tokenizers import Tokenizer

from .errors import BundleError, BundleMismatchError

FORMAT = "del-client-bundle/1"
MECHANISMS = ("binomial", "raw")
_METADATA_KEY = "del_client_bundle"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plain_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of `tokenizer` that encodes text as it is: no padding, no truncation.

    Padding would send [PAD] tokens as part of the prompt (and spend privacy on them);
    truncation would silently drop the end of a long prompt.
    """
    plain = Tokenizer.from_str(tokenizer.to_str())
    plain.no_padding()
    plain.no_truncation()
    return plain


@dataclass(frozen=True, eq=False)
class ClientBundle:
    """Tokenizer + projected table + clip, for one served model and projection; or, with
    mechanism="raw", tokenizer + the unprojected table and no clip."""

    model_id: str
    tokenizer: Tokenizer
    table: np.ndarray  # (V, k) float32; raw: (V, d)
    clip: float | None = None  # required for a projected bundle; None for a raw one
    bos_id: int | None = None
    eos_id: int | None = None
    mechanism: str = "binomial"
    _bytes: bytes = field(init=False, repr=False)
    _encoder: Tokenizer = field(init=False, repr=False)  # `tokenizer` as plain_tokenizer

    def __post_init__(self) -> None:
        table = np.ascontiguousarray(self.table, dtype=np.float32)
        object.__setattr__(self, "table", table)
        if self.mechanism not in MECHANISMS:
            raise BundleError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        if self.mechanism == "raw" and self.clip is not None:
            raise BundleError("a raw bundle has no clip: nothing is clipped on the raw path")
        _raise_if_invalid(self._metadata(), table, self.tokenizer)
        blob = save_tensors(
            {"table": table}, metadata={_METADATA_KEY: _canonical(self._metadata())}
        )
        object.__setattr__(self, "_bytes", blob)
        # Encode with a plain copy and keep `tokenizer` as published: its bytes are the digest.
        object.__setattr__(self, "_encoder", plain_tokenizer(self.tokenizer))

    @property
    def dim(self) -> int:
        """Coordinates per token: k for a projected bundle, the hidden size d for a raw one."""
        return self.table.shape[1]

    @property
    def projection_dim(self) -> int:
        if self.mechanism == "raw":
            raise BundleError("a raw bundle is not projected: its width is .dim, the hidden size")
        return self.table.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.table.shape[0]

    @cached_property
    def digest(self) -> str:
        """SHA-256 (hex) of the serialized bundle: what manifests advertise. Hashed once: a
        server checks it against every request's header (64 MB for a 128k vocabulary at
        k = 128)."""
        return sha256_hex(self._bytes)

    def to_bytes(self) -> bytes:
        return self._bytes

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self._bytes)
        return path

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with BOS first when the model has one (the wire carries the
        ids after it: the server prepends BOS itself)."""
        ids = self._encoder.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if self.bos_id is not None else []) + ids

    def embed(self, ids: list[int] | np.ndarray) -> np.ndarray:
        """(T,) token ids -> (T, k) projected embeddings."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size)):
            raise BundleError(f"token ids must be a 1-D array in [0, {self.vocab_size})")
        return self.table[ids]

    @classmethod
    def from_bytes(cls, data: bytes, *, expected_digest: str | None = None) -> ClientBundle:
        """Parse and validate a serialized bundle; check its digest first when one is given."""
        if expected_digest is not None and sha256_hex(data) != expected_digest:
            raise BundleMismatchError(
                f"bundle digest {sha256_hex(data)[:16]}… differs from the expected "
                f"{expected_digest[:16]}…"
            )
        metadata = _read_metadata(data)
        try:
            tokenizer = Tokenizer.from_str(metadata["tokenizer"])
        except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
            raise BundleError(f"bundle tokenizer does not parse: {exc}") from exc
        try:
            raw = metadata.get("mechanism") == "raw"
            bundle = cls(
                model_id=metadata["model_id"],
                tokenizer=tokenizer,
                table=load_tensors(data)["table"],
                clip=None if raw else metadata["clip"],
                bos_id=metadata["bos_id"],
                eos_id=metadata["eos_id"],
                mechanism="raw" if raw else "binomial",
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, SafetensorError) as exc:
            raise BundleError(f"malformed client bundle: {exc!r}") from exc
        if bundle.to_bytes() != data:
            raise BundleError("client bundle is not in canonical form")
        return bundle

    @classmethod
    def load(cls, path: str | Path, *, expected_digest: str | None = None) -> ClientBundle:
        return cls.from_bytes(Path(path).read_bytes(), expected_digest=expected_digest)

    def _metadata(self) -> dict:
        common = {
            "format": FORMAT,
            "model_id": self.model_id,
            "tokenizer": self.tokenizer.to_str(),
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "vocab_size": int(self.table.shape[0]),
        }
        if self.mechanism == "raw":
            return {**common, "mechanism": "raw", "hidden_size": int(self.table.shape[-1])}
        return {**common, "clip": self.clip, "projection_dim": int(self.table.shape[-1])}


def _canonical(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _read_metadata(data: bytes) -> dict:
    """The bundle's JSON metadata, read from the safetensors header (8-byte LE length + JSON)."""
    try:
        (size,) = struct.unpack_from("<Q", data)
        header = json.loads(data[8 : 8 + size])
        metadata = json.loads(header["__metadata__"][_METADATA_KEY])
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"not a DEL client bundle: {exc!r}") from exc
    if metadata.get("format") != FORMAT:
        raise BundleMismatchError(f"bundle format {metadata.get('format')!r}, expected {FORMAT!r}")
    return metadata


def _raise_if_invalid(metadata: dict, table: np.ndarray, tokenizer: Tokenizer) -> None:
    """Collect every problem with a bundle's contents, then raise them together."""
    problems = []
    if not isinstance(metadata["model_id"], str) or not metadata["model_id"]:
        problems.append("model_id must be a non-empty string")
    if "mechanism" in metadata:  # a raw bundle: nothing is clipped
        if metadata["mechanism"] != "raw":
            problems.append(f"mechanism must be 'raw' or absent, got {metadata['mechanism']!r}")
    else:
        clip = metadata["clip"]
        if not isinstance(clip, int | float) or not math.isfinite(clip) or clip <= 0:
            problems.append(f"clip must be finite and > 0, got {clip!r}")
    if table.ndim != 2 or 0 in table.shape:
        problems.append(f"table must be a non-empty 2-D array, got shape {table.shape}")
    elif not np.isfinite(table).all():
        problems.append("table contains NaN or infinite values")
    elif tokenizer.get_vocab_size() > table.shape[0]:
        problems.append(
            f"tokenizer has {tokenizer.get_vocab_size()} ids but table only {table.shape[0]} rows"
        )
    for name in ("bos_id", "eos_id"):
        value = metadata[name]
        if value is not None and not (isinstance(value, int) and 0 <= value < len(table)):
            problems.append(f"{name} must be None or a row of the table, got {value!r}")
    if problems:
        raise BundleError("invalid client bundle: " + "; ".join(problems))
