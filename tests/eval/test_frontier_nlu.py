"""`del-server eval-frontier-nlu` on a tiny grid of the real MiniLM and SST-2: every point
carries its accuracy and attack rate, the committed adapter's levels sit beside them, and the
figure is drawn."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from del_server.cli import main
from del_server.eval.classification_frontier import best_under, run, served_levels
from del_server.eval.cli import _points
from del_server.eval.config import NluFrontierConfig
from del_server.settings import DEFAULT_NLU_ADAPTER
from del_server.train.defaults import DEFAULT_NLU_MODEL

REPO = Path(__file__).resolve().parents[2]


def test_a_tiny_grid_writes_points_served_levels_and_figure(shared_dir, tmp_path):
    config = NluFrontierConfig(
        model=DEFAULT_NLU_MODEL,
        data=str(shared_dir / "data/sst2"),
        adapter=DEFAULT_NLU_ADAPTER,
        out=tmp_path,
        points=((2, 3, 0.5), (2, 3, 64.0)),
        projection_steps=5,
        attack_prompts=16,
        eval_seeds=(0,),
    )
    report = run(config)
    assert "trigram_marginal" in report["attacks"]  # the prior-only attack strongest at levels
    assert json.loads((tmp_path / "frontier.json").read_text())["points"] == report["points"]
    noisy, clear = report["points"]
    assert noisy["rate"] < clear["rate"]  # less noise, more recovered
    for point in report["points"]:
        assert point["strongest_attack"] in report["attacks"]
        assert point["rate"] <= point["high"]
        assert 0.0 < point["accuracy"] < 1.0
        assert point["bits_per_token"] == 6
    assert [level["target"] for level in report["served"]]  # the committed levels, evaluated
    assert best_under(report, 1.0) in report["points"]
    assert best_under(report, 0.0) is None
    text = (tmp_path / "FRONTIER.md").read_text()
    assert "| 2 | 3 | 64 | 6 |" in text
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


def test_served_rows_are_set_beside_a_stored_grid_without_rerunning_it(tmp_path, monkeypatch):
    committed = json.loads((REPO / "docs/eval-nlu/frontier/frontier.json").read_text())
    (tmp_path / "frontier.json").write_text(json.dumps({**committed, "served": []}))
    argv = ["eval-frontier-nlu", "--out", str(tmp_path), "--served-only"]
    monkeypatch.setattr(sys, "argv", ["del-server", *argv])  # as the console script runs it
    main()
    report = json.loads((tmp_path / "frontier.json").read_text())
    assert report["points"] == committed["points"]  # the grid as it was
    assert report["served"] == served_levels(Path(DEFAULT_NLU_ADAPTER))
    assert report["served"]  # the adapter's levels are back
    assert report["served_from"]["adapter"] == "del_server/adapters/minilm-sst2"
    text = (tmp_path / "FRONTIER.md").read_text()
    assert f"`del-server eval-frontier-nlu --out {tmp_path} --served-only`" in text
    assert "| 10% | 2 | 2 |" in text
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "text", ["3,9,4", "0,2,8", "2,2,-1", "2,2", "a,b,c", "2,2,8;", "2,2,inf", "2,2,nan"]
)
def test_a_grid_point_out_of_range_is_refused_with_its_reason(text):
    with pytest.raises(argparse.ArgumentTypeError, match="k,b,mu"):
        _points(text)


def test_grid_points_parse_in_order():
    assert _points("3,2,64;1,4,16.5") == ((3, 2, 64.0), (1, 4, 16.5))
