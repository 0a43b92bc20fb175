"""Write docs/protocol_vectors.json: test vectors of the wire contract (docs/PROTOCOL.md).

Every number in the file comes from del_client's own code (the bundle, the quantizer, the
bit packing, the frame splitter) run on the default model and its trained adapter, with
fixed uniforms in place of the CSPRNG, so a client in any language can check each step of
its own implementation against it. tests/interop/test_protocol_vectors.py regenerates the
file and compares it byte for byte: it cannot go stale.

Floats are JSON numbers printed as Python's shortest round-trip repr, so they parse back to
the same IEEE double in any language; a table row is float32 widened to double (exact).

Usage: `python protos/vectors.py [--out FILE]` (default docs/protocol_vectors.json). Needs the
server extra (torch) to build the bundle, and the model in ../shared (DEL_SHARED_DIR).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: this checkout's packages, not an installed copy
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "protocol_vectors.json"
ADAPTER = ROOT / "del_server" / "adapters" / "stories260K"
FORMAT = "del-protocol-vectors/1"
TEXT = "Once upon a time"
UNIFORM_SEED = 20260601  # the uniforms are written out: the seed only made them
PACKING_SYMBOLS = 5  # symbols per packing vector: leaves padding bits for most widths
SPLIT_PAYLOAD_BYTES = 16  # a small frame budget, so the prompt splits into several frames


class FixedUniforms:
    """Stands in for the CSPRNG: BinomialQuantizer draws `random(n)` uniforms, one per
    coordinate, in (T, k) row-major order."""

    def __init__(self, uniforms: np.ndarray) -> None:
        self._uniforms = uniforms

    def random(self, n: int) -> np.ndarray:
        assert n == self._uniforms.size
        return self._uniforms


def _floats(values) -> list:
    return np.asarray(values, dtype=np.float64).tolist()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_bundles():
    """The default model's published bundles and levels: (private bundle, raw bundle,
    calibration records, the levels the server publishes)."""
    from del_server.adapter import Adapter
    from del_server.bundles import client_bundle, raw_bundle
    from del_server.levels import adapter_levels
    from del_server.models import load_model
    from del_server.settings import DEFAULT_MODEL

    loaded = load_model(DEFAULT_MODEL)
    adapter = Adapter.load(ADAPTER)
    bundle, raw = client_bundle(loaded, adapter), raw_bundle(loaded)
    return bundle, raw, adapter.calibration, adapter_levels(adapter)


def coded(bundle, spec, symbols: np.ndarray, *, with_mixture: bool) -> dict:
    """The symbol model of `spec` for the bundle, and the symbols entropy-coded with it."""
    from del_client import ans
    from del_client.symbol_model import SymbolModel, mixture

    model = SymbolModel.from_table(bundle.table, spec)
    payload = ans.encode(symbols, model)
    case = {"bits": spec.bits, "scale": spec.scale, "clip": spec.clip, "dim": spec.dim}
    if with_mixture:
        case["mixture"] = mixture(bundle.table, spec).tolist()
    return {
        **case,
        "frequencies": model.frequencies.tolist(),
        "cross_entropy_bits": model.cross_entropy_bits(symbols),
        "payload_hex": payload.hex(),
        "payload_bits": 8 * len(payload),
        "packed_bits": symbols.size * spec.bits,
    }


def vectors() -> dict:
    from del_client.codec import RawSpec, encode_frames, pack_symbols, tokens_per_frame
    from del_client.mechanism import BinomialQuantizer, PrivacySpec, decode_table
    from del_client.parameters import SUPPORTED_BITS
    from del_server.levels import LEVEL_TOLERANCE

    bundle, raw, calibration, levels = build_bundles()
    dim, clip = bundle.projection_dim, bundle.clip
    ids = bundle.encode(TEXT)[1:]  # encode() puts BOS first; the server prepends it instead
    rows = bundle.embed(ids)
    uniforms = np.random.default_rng(UNIFORM_SEED).random(rows.size)

    def level_spec(mu: float, bits: int) -> PrivacySpec:
        return PrivacySpec.from_mu(mu=mu, dim=dim, bits=bits, clip=clip)

    scale_from_mu = []
    for level in calibration:
        for bits in sorted({level.bits, 1, 8}):
            spec = level_spec(level.mu, bits)
            scale_from_mu.append(
                {"mu": level.mu, "dim": dim, "bits": bits, "clip": clip, "scale": spec.scale}
            )
    scale_from_epsilon = []
    for epsilon, delta in ((8.0, 1e-5), (26.682519997284732, 1e-5)):
        spec = PrivacySpec.from_epsilon(epsilon=epsilon, delta=delta, dim=dim, bits=4, clip=clip)
        scale_from_epsilon.append(
            {
                "epsilon": epsilon,
                "delta": delta,
                "dim": dim,
                "bits": 4,
                "clip": clip,
                "scale": spec.scale,
                "q": spec.q,
            }
        )

    privatize = []
    mu = calibration[1].mu if len(calibration) > 1 else calibration[0].mu
    for bits in (1, 3, 4, 8):
        spec = level_spec(mu, bits)
        symbols = BinomialQuantizer(spec, rng=FixedUniforms(uniforms)).privatize(rows)
        payload = pack_symbols(symbols, bits)
        privatize.append(
            {
                "mu": mu,
                "dim": dim,
                "bits": bits,
                "clip": clip,
                "scale": spec.scale,
                "symbols": symbols.tolist(),
                "payload_hex": payload.hex(),
                "payload_sha256": _sha256(payload),
                "decoded": _floats(decode_table(spec)[symbols]),
            }
        )

    packing = []
    rng = np.random.default_rng(UNIFORM_SEED + 1)
    for bits in SUPPORTED_BITS:
        symbols = rng.integers(0, 1 << bits, PACKING_SYMBOLS, dtype=np.uint8)
        packing.append(
            {
                "bits": bits,
                "symbols": symbols.tolist(),
                "payload_hex": pack_symbols(symbols, bits).hex(),
            }
        )

    spec = level_spec(mu, 4)
    symbols = np.asarray(privatize[2]["symbols"], dtype=np.uint8)
    split = [
        {
            "sequence": frame.sequence,
            "token_count": frame.token_count,
            "dim": frame.dim,
            "bits": frame.bits,
            "payload_hex": frame.payload.hex(),
        }
        for frame in encode_frames(symbols, spec, max_payload_bytes=SPLIT_PAYLOAD_BYTES)
    ]

    coded_cases = [
        coded(
            bundle,
            level_spec(mu, case["bits"]),
            np.asarray(case["symbols"], dtype=np.uint8),
            with_mixture=case["bits"] == 4,
        )
        for case in privatize
        if case["bits"] in (4, 8)
    ]

    raw_ids = raw.encode(TEXT)[1:]
    raw_rows = raw.embed(raw_ids)
    raw_spec = RawSpec(dim=raw_rows.shape[1])
    (raw_frame,) = encode_frames(raw_rows, raw_spec)

    return {
        "format": FORMAT,
        "generated_by": "python protos/vectors.py (docs/PROTOCOL.md explains every entry)",
        "bundle": {
            "model": "stories260K",
            "adapter": str(ADAPTER.relative_to(ROOT)),
            "digest": bundle.digest,
            "size_bytes": len(bundle.to_bytes()),
            "model_id": bundle.model_id,
            "vocab_size": bundle.vocab_size,
            "projection_dim": dim,
            "clip": clip,
            "bos_id": bundle.bos_id,
            "eos_id": bundle.eos_id,
        },
        "tokenization": {
            "text": TEXT,
            "ids": ids,
            "server_input_ids": [bundle.bos_id, *ids],
        },
        "table_rows": {"ids": ids, "rows": _floats(rows)},
        "levels": {
            "tolerance": LEVEL_TOLERANCE,
            "levels": [
                {
                    "id": level.id,
                    "mu": level.mu,
                    "dim": level.spec.dim,
                    "bits": level.spec.bits,
                    "clip": level.spec.clip,
                    "scale": level.spec.scale,
                    "soft_prompt": level.soft_prompt,
                }
                for level in levels
            ],
        },
        "scale_from_mu": scale_from_mu,
        "scale_from_epsilon": scale_from_epsilon,
        "privatize": {"ids": ids, "uniforms": _floats(uniforms), "cases": privatize},
        "packing": packing,
        "frames": {
            "max_payload_bytes": SPLIT_PAYLOAD_BYTES,
            "tokens_per_frame": tokens_per_frame(spec, SPLIT_PAYLOAD_BYTES),
            "symbols_from": "privatize.cases[bits=4]",
            "frames": split,
        },
        "coded": {"symbols_from": "privatize.cases[bits]", "cases": coded_cases},
        "raw": {
            "digest": raw.digest,
            "size_bytes": len(raw.to_bytes()),
            "hidden_size": raw_rows.shape[1],
            "ids": raw_ids,
            "first_row": _floats(raw_rows[0]),
            "payload_bytes": len(raw_frame.payload),
            "payload_sha256": _sha256(raw_frame.payload),
        },
    }


def _dump(value, indent: str = "") -> str:
    """JSON with one entry a line; a list of numbers, or an object of plain values, on one."""
    inner = indent + "  "
    if isinstance(value, dict) and any(isinstance(v, dict | list) for v in value.values()):
        items = [f"{inner}{json.dumps(k)}: {_dump(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        items = [inner + _dump(v, inner) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    return json.dumps(value, allow_nan=False)


def render() -> str:
    """The file's text: deterministic, one key order, one float format."""
    return _dump(vectors()) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output file")
    out = parser.parse_args().out
    out.write_text(render())
    print(out, file=sys.stderr)


if __name__ == "__main__":
    main()
