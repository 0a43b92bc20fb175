"""Package boundaries: the client never needs torch, and the generated protobuf code is current."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "transformers"}:
            raise ImportError(f"{name} is blocked: del_client must not need it")
sys.meta_path.insert(0, Block())
import del_client, del_client.cli, del_client.codec, del_client.bench
from del_client import PrivacySpec, BinomialQuantizer
import numpy as np
from del_client import ans
from del_client.symbol_model import SymbolModel
spec = PrivacySpec.from_mu(mu=5.0, dim=8, bits=4, clip=1.0)
symbols = BinomialQuantizer(spec).privatize(np.zeros((2, 8), np.float32))
model = SymbolModel.from_table(np.zeros((3, 8), np.float32), spec)
assert (ans.decode(ans.encode(symbols, model), model, 2) == symbols).all()
del_client.cli.main(["privacy", "--mu", "5", "--dim", "8", "--clip", "1", "--json"])
assert not any(m.split(".")[0] in {"torch", "transformers"} for m in sys.modules)
"""


def test_del_client_imports_and_runs_with_torch_and_transformers_blocked():
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert '"epsilon_token"' in result.stdout


def test_generated_protobuf_modules_match_the_protos(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    committed = REPO / "del_client" / "proto"
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == sorted(p.name for p in committed.glob("*_pb2*.py*"))
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, committed, generated, shallow=False)
    assert not errors
    assert not mismatch, f"stale generated modules {mismatch}: run `make proto`"
