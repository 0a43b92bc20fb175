"""`del-server eval-frontier` on a tiny sweep: every point carries its attack rate and both
front-ends' held-out loss, the report names the crossover, and the figure is drawn."""

from __future__ import annotations

import json

from del_server.eval.config import FrontierConfig
from del_server.eval.frontier import crossover, run
from del_server.settings import DEFAULT_ADAPTER


def test_a_small_sweep_writes_points_crossover_and_figure(shared_dir, stories260k, tmp_path):
    config = FrontierConfig(
        model=str(stories260k),
        data=str(shared_dir / "data/tinystories/tinystories_val_head_dev.txt"),
        adapter=DEFAULT_ADAPTER,
        out=tmp_path,
        mus=(2.0, 200.0),
        steps=3,
        eval_windows=16,
        attack_prompts=8,
    )
    report = run(config)
    assert json.loads((tmp_path / "frontier.json").read_text())["points"] == report["points"]
    low, high = report["points"]
    assert low["rate"] < high["rate"]  # less noise, more recovered
    for point in report["points"]:
        assert point["strongest_attack"] in ("nearest_neighbour", "likelihood", "bigram_marginal")
        assert point["linear"] > 0
        assert point["posterior"] > 0
    text = (tmp_path / "FRONTIER.md").read_text()
    assert "| 200 |" in text
    assert ("first beats nothing sent" in text) == (crossover(report, "posterior") is not None)
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
